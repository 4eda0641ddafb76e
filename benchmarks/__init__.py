"""Reproducible benchmarks: each module runs with ``python -m benchmarks.<name>`` and prints a RATIO line."""
