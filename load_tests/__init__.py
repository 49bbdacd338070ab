"""Load generators and benchmarks: `python -m load_tests run|prepare|bench`; `bench.py` compares multi-adapter serving
with the bare base and PEFT, `bench_registry.py` measures the registry's push/pull/ls, `bench_training.py` fine-tuning,
`bench_http.py` the HTTP API against gRPC on one server."""

import os

# Model hubs are unreachable on these machines: without these, transformers and huggingface_hub would try the
# network first. Set by each entry point's main() (never at import), before it imports either library.
OFFLINE_ENVIRONMENT = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def use_offline_hub() -> None:
    """Default the environment to offline model hubs (a value the caller already set wins)."""
    for key, value in OFFLINE_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
