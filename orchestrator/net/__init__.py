"""Stage 1, the network: which fabric interface (discovery, selection) and the
NCCL/UCX/Gloo/Ray environment that binds every library to it (commenv, plan).
Pure decisions over netlink and sysfs readings; imports nothing else of ours."""
