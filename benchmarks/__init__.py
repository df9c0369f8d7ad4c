"""Benchmark scripts: each prints its figures (never asserted in tests). `python -m benchmarks.<name>`."""
