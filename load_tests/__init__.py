"""Benchmarks, run as scripts (`.venv/bin/python load_tests/<name>.py`); each prints its figures side by side."""
