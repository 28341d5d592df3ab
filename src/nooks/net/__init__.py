"""The network class: drivers for simulated NICs behind a real TAP device."""
