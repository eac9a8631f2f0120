"""Load tests and benchmarks for the sink; `python -m loadtest.bench --help` lists the options."""
