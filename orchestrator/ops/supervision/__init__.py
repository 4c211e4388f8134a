"""Supervision while serving: lost nodes, the recovery, node health."""
