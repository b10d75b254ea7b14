"""Benchmarks. They measure; they are never run as tests. Figures go to docs/benchmarks.md."""
