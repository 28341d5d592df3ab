"""Simulated hardware, on the host's side: what a driver's domain reaches through
mapped registers and DMA memory, and the real wire a network card's port is."""
