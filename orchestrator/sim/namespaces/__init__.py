"""The simulated Sparks: network namespaces, a veth pair, one GPU shared or one each."""
