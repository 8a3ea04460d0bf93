"""Benchmarks of the edge agent; run them with ``make bench`` (see docs/benchmarks.md)."""
