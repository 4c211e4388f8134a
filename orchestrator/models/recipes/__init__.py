"""Recipes in the community's v1 format (eugr/spark-vllm-docker, sparkrun): read and
filled (format), pinned (lock), and the copies of their model checked on every node
(verify)."""
