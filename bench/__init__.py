"""Benchmarks: how close Dealflow runs to Temporal's own limit (``make bench``)."""
