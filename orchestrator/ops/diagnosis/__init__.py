"""Diagnosis: doctor, its checks and facts, the fabric test."""
