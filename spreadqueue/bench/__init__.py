"""Benchmarks of spreadqueue's building blocks (run them as ``python -m``; not tests)."""
