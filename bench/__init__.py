"""geta benchmarks: one script per question, run as ``python -m bench.NAME`` (scripts may print)."""
