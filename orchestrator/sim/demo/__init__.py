"""The demo: the simulated cluster serving, its clients, and the greedy-token check."""
