"""pytest-benchmark suites (run with `pytest benchmarks/`; `pytest tests/` never collects them)."""
