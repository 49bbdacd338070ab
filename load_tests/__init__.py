"""Load generators and benchmarks; `bench_registry.py` measures the registry's push/pull/ls."""
