"""Benchmarks of kdimpl's losses (not part of the installed package): ``python -m benchmarks.losses``."""
