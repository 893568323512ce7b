"""Metrics and benchmarks. ``benchmarks.metrics`` is the project's only definition of the RIS metrics (numpy only)."""
