"""Benchmarks of Serval's components; `python -m bench.registry` is the registry's (see README.md)."""
