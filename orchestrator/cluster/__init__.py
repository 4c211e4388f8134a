"""Stage 2, the Ray cluster: one node's plan (bootstrap), its Ray processes
(ray_node), joining and watching the nodes (membership, nodes), versions and token
auth across them, and the run record `stop` and `status` read (runstate)."""
