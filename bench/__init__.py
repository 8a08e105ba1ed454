"""Benchmarks that print figures; run by hand (``python -m bench.ingest``), never collected by pytest."""
