"""Benchmarks that run the real routing code against simulated markets in virtual time."""
