"""Load generators and benchmarks: `python -m load_tests run|prepare|bench`; `bench.py` compares multi-adapter serving
with the bare base and PEFT, `bench_registry.py` measures the registry's push/pull/ls, `bench_training.py` fine-tuning."""
