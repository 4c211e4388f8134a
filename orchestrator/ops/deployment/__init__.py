"""Deployment: the container a Spark runs (the host launcher)."""
