"""Stage 5, operations: what keeps a serving cluster running (supervision of the
nodes while serving, recovery after a lost node)."""
