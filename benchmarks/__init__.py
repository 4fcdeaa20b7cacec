"""Benchmarks of the coordinator (run as modules, e.g. ``python -m benchmarks.throughput``)."""
