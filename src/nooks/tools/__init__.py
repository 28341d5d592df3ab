"""Tools built on nooks: the demo, the crash matrix, processes that run hosts."""
