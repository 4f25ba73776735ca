"""Benchmarks and the load-test gate. Run as modules: python -m benchmarks.latency."""
