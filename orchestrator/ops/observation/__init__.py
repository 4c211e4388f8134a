"""Observation: logs, metrics, the serving benchmark client."""
