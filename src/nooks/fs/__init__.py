"""The filesystem class: fusepy/mfusepy-style drivers behind a real FUSE mount."""
