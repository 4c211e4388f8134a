"""Models: the support matrix and its presets, the memory fit, weights on every node."""
