"""Benchmarks: `.venv/bin/python -m bench.<area>`; each prints a table with its baseline."""
