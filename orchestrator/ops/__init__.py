"""Stage 5, operations: what keeps a serving cluster running and tells how it runs:
preflight checks (doctor), supervision of the nodes while serving and recovery after
a lost node, logs, metrics, the serving benchmark and the fabric test."""
