"""Benchmarks: `python -m bench` prints a table of measured ratios (never part of the test suite)."""
