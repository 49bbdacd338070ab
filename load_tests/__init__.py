"""Load generators and benchmarks: `python -m load_tests run|prepare|bench`; `bench.py` compares multi-adapter serving
with the bare base and PEFT, `bench_registry.py` measures the registry's push/pull/ls, `bench_training.py` fine-tuning,
`bench_http.py` the HTTP API against gRPC on one server."""

import os
import socket

# Model hubs are unreachable on these machines: without these, transformers and huggingface_hub would try the
# network first. Set by each entry point's main() (never at import), before it imports either library.
OFFLINE_ENVIRONMENT = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def use_offline_hub() -> None:
    """Default the environment to offline model hubs (a value the caller already set wins)."""
    for key, value in OFFLINE_ENVIRONMENT.items():
        os.environ.setdefault(key, value)


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports on 127.0.0.1 (all bound at once, so none is handed out twice), for a child server."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
