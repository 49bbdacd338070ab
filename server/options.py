"""Server options: the one place that defines each setting, its default, help, flag and range.

`reg serve` makes one --flag of each field (cli/common.py:with_options_of), so a setting is declared once.
"""

from __future__ import annotations

from dataclasses import dataclass

from registry.fields import documented, range_problems


@dataclass
class ServerOptions:
    base: str = documented("smollm2-135m-instruct", "Base model: a registered name, a model directory or a hub id.")
    quant: str = documented("nf4", "Base weights in memory: nf4 (4-bit NormalFloat), int8, or none (full precision).")
    host: str = documented("127.0.0.1", "Address to listen on.")
    port: int = documented(50051, "Port to listen on (0 picks a free one).")
    max_batch_size: int = documented(16, "Rows decoded together; new requests join between decode steps up to this.",
                                     minimum=1)
    max_prefill_tokens: int = documented(512, "Prompt tokens prefilled per engine turn (at least one request): arrivals "
                                              "beyond it join at the next turns, between decode steps, so a wave of "
                                              "arrivals gets its first tokens in turn and the running rows keep going.",
                                         minimum=1)
    prefix_cache_mb: int = documented(512, "Memory for prefilled prompts' keys and values, kept so that a prompt starting "
                                           "the same way (a shared system prompt, a repeated request) prefills only "
                                           "the rest; native engine; 0 = off.", minimum=0)
    max_queue: int = documented(256, "Requests waiting to join the batch; beyond it requests get RESOURCE_EXHAUSTED.",
                                minimum=1)
    max_adapters: int = documented(8, "Adapters held in memory at once (LRU eviction of idle, unpinned ones).", minimum=1)
    adapter_memory_mb: int = documented(1024, "Memory for adapter weights in the cache, in MB.", minimum=1)
    lora_rank: int = documented(16, "LoRA rank the adapter slots are allocated for at startup (a larger adapter grows them).",
                                minimum=0)
    gather_cache_mb: int = documented(512, "Memory for per-row adapter copies kept between decode steps (faster decode); "
                                           "0 = off.", minimum=0)
    default_max_new_tokens: int = documented(128, "max_new_tokens when a request leaves it at 0.", minimum=1)
    max_new_tokens_limit: int = documented(1024, "Largest max_new_tokens a request may ask for.", minimum=1)
    max_prompt_bytes: int = documented(0, "Largest prompt (or sum of chat message contents) in bytes, checked before tokenizing "
                                          "(0 = 8 bytes per token of the base's context).", minimum=0)
    max_merge_adapters: int = documented(8, "Most entries a per-request merge may combine.", minimum=1)
    max_merge_rank: int = documented(128, "Largest rank a per-request merge may have (cat sums its inputs' ranks).", minimum=1)
    grace_s: float = documented(10.0, "On SIGTERM, seconds in-flight requests may take to finish.", flag="grace")
    workers: int = documented(0, "gRPC handler threads, each waiting request holds one (0 = max batch + max queue + 16); "
                                 "calls beyond them get RESOURCE_EXHAUSTED at once.", minimum=0)
    auth_tokens: str | None = documented(None, "Tokens file (YAML of names, sha256 hashes and roles); every RPC then needs a "
                                               "token with its role.")
    insecure_listen_all: bool = documented(False, "Allow a non-localhost --host without auth (anyone who reaches the port may "
                                                  "do anything).")
    tls_cert: str | None = documented(None, "PEM certificate chain to serve TLS with (needs --tls-key).")
    tls_key: str | None = documented(None, "PEM private key of --tls-cert.")
    max_blob_mb: float = documented(4096.0, "Registry service: largest blob (adapter file) a push may upload, in MB.")
    http_port: int | None = documented(None, "Also serve the OpenAI-compatible HTTP API on this port, on --host with the "
                                             "same auth and TLS (0 picks a free one; unset = no HTTP).")
    http_max_body_kb: int = documented(0, "Largest HTTP request body in KB (0 = what --max-prompt-bytes allows, "
                                          "JSON-escaped).", minimum=0)
    http_timeout_s: float = documented(30.0, "Seconds an HTTP client may take to send a request (head or body) or "
                                             "to read the next piece of a stream before it is dropped.",
                                       flag="http-timeout")
    metrics_port: int | None = documented(None, "Also serve GET /metrics alone on this port, asking no token, for scrapers "
                                                "that send none (the Gateway API inference extension's endpoint picker): on "
                                                "--host, TLS as --tls-cert; anyone who reaches it reads adapter names and "
                                                "counts (0 picks a free one; unset = none).")
    engine: str = documented("native", "native (loradock's own: Hugging Face forward, per-row LoRA slots) or vllm (a vLLM "
                                       "child process does batching, attention and the LoRA kernels; needs --quant none "
                                       "and --vllm-python).")
    vllm_python: str | None = documented(None, "--engine vllm: a python with vLLM and loradock's plugin "
                                               "(integrations/vllm) installed (default: $LORADOCK_VLLM_PYTHON).")
    vllm_dtype: str = documented("float32", "--engine vllm: the dtype vLLM computes in (float32, bfloat16, float16, auto).")
    vllm_args: str | None = documented(None, "--engine vllm: more `vllm serve` arguments, as one shell-quoted string "
                                             "(e.g. \"--gpu-memory-utilization 0.8\").")
    allow_path_adapters: bool = documented(False, "Let POST /v1/load_lora_adapter (admin) take a `lora_path`: a "
                                                  "directory the server can read, pushed to the registry and loaded.")

    def validate(self) -> None:
        from .errors import BadRequest

        if self.quant not in ("nf4", "int8", "none"):
            raise BadRequest(f"--quant {self.quant!r}: use nf4, int8 or none")
        if self.engine not in ("native", "vllm"):
            raise BadRequest(f"--engine {self.engine!r}: use native or vllm")
        if self.engine == "vllm" and self.quant != "none":
            raise BadRequest(f"--engine vllm serves the base's own weights: give --quant none (not {self.quant})")
        if self.vllm_dtype not in ("float32", "bfloat16", "float16", "auto"):
            raise BadRequest(f"--vllm-dtype {self.vllm_dtype!r}: use float32, bfloat16, float16 or auto")
        problems = range_problems(self)  # each field's `minimum=`
        if problems:
            raise BadRequest(problems[0])
        self.validate_listen()

    def validate_listen(self) -> None:
        """What the Registry-only server checks too: TLS files, the blob limit."""
        from pathlib import Path

        from .errors import BadRequest

        if bool(self.tls_cert) != bool(self.tls_key):
            raise BadRequest("--tls-cert and --tls-key go together: give both or neither")
        for flag, path in (("--tls-cert", self.tls_cert), ("--tls-key", self.tls_key), ("--auth-tokens", self.auth_tokens)):
            if path and not Path(path).is_file():
                raise BadRequest(f"{flag} {path}: no such file")
        if not self.max_blob_mb > 0:
            raise BadRequest(f"--max-blob-mb must be more than 0, got {self.max_blob_mb}")
        ports = (("--port", self.port), ("--http-port", self.http_port), ("--metrics-port", self.metrics_port))
        for flag, port in ports:
            if port is not None and not 0 <= port <= 65535:
                raise BadRequest(f"{flag} {port}: must be between 0 and 65535")
        for i, (flag, port) in enumerate(ports):  # 0 picks a free port, so only fixed ones can clash
            clash = next((other for other, taken in ports[:i] if port and taken == port), None)
            if clash:
                raise BadRequest(f"{flag} {port}: the same as {clash}; each listener needs a port of its own")
        if not self.http_timeout_s > 0:
            raise BadRequest(f"--http-timeout must be more than 0, got {self.http_timeout_s}")

    @property
    def handler_threads(self) -> int:
        """gRPC handler threads: enough for a full batch and a full queue, so the queue limit is what rejects."""
        return self.workers or self.max_batch_size + self.max_queue + 16

    @property
    def max_blob_bytes(self) -> int:
        return int(self.max_blob_mb * 2**20)

