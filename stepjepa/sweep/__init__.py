"""Sweeps: the runs of a sweep and their cache keys, the report, its figures, and comparing reruns."""
