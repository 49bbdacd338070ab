"""Server options: one place that defines each setting, its default and its help (the CLI reads these)."""

from __future__ import annotations

from dataclasses import dataclass, field


def _opt(default, text: str, flag: str | None = None):
    """A setting with its default and help; `reg serve` makes one --flag of each (`flag` when not the field's name)."""
    return field(default=default, metadata={"help": text, **({"flag": flag} if flag else {})})


@dataclass
class ServerOptions:
    base: str = _opt("smollm2-135m-instruct", "Base model: a registered name, a model directory or a hub id.")
    quant: str = _opt("nf4", "Base weights in memory: nf4 (4-bit NormalFloat), int8, or none (full precision).")
    host: str = _opt("127.0.0.1", "Address to listen on.")
    port: int = _opt(50051, "Port to listen on (0 picks a free one).")
    max_batch_size: int = _opt(16, "Rows decoded together; new requests join between decode steps up to this.")
    max_queue: int = _opt(256, "Requests waiting to join the batch; beyond it requests get RESOURCE_EXHAUSTED.")
    max_adapters: int = _opt(8, "Adapters held in memory at once (LRU eviction of idle, unpinned ones).")
    adapter_memory_mb: int = _opt(1024, "Memory for adapter weights in the cache, in MB.")
    lora_rank: int = _opt(16, "LoRA rank the adapter slots are allocated for at startup (a larger adapter grows them).")
    gather_cache_mb: int = _opt(512, "Memory for per-row adapter copies kept between decode steps (faster decode); 0 = off.")
    default_max_new_tokens: int = _opt(128, "max_new_tokens when a request leaves it at 0.")
    max_new_tokens_limit: int = _opt(1024, "Largest max_new_tokens a request may ask for.")
    max_prompt_bytes: int = _opt(0, "Largest prompt (or sum of chat message contents) in bytes, checked before tokenizing "
                                    "(0 = 8 bytes per token of the base's context).")
    max_merge_adapters: int = _opt(8, "Most entries a per-request merge may combine.")
    max_merge_rank: int = _opt(128, "Largest rank a per-request merge may have (cat sums its inputs' ranks).")
    grace_s: float = _opt(10.0, "On SIGTERM, seconds in-flight requests may take to finish.", flag="grace")
    workers: int = _opt(0, "gRPC handler threads, each waiting request holds one (0 = max batch + max queue + 16); "
                           "calls beyond them get RESOURCE_EXHAUSTED at once.")
    auth_tokens: str | None = _opt(None, "Tokens file (YAML of names, sha256 hashes and roles); every RPC then needs a token with its role.")
    insecure_listen_all: bool = _opt(False, "Allow a non-localhost --host without auth (anyone who reaches the port may do anything).")
    tls_cert: str | None = _opt(None, "PEM certificate chain to serve TLS with (needs --tls-key).")
    tls_key: str | None = _opt(None, "PEM private key of --tls-cert.")
    max_blob_mb: float = _opt(4096.0, "Registry service: largest blob (adapter file) a push may upload, in MB.")

    def validate(self) -> None:
        from .errors import BadRequest

        if self.quant not in ("nf4", "int8", "none"):
            raise BadRequest(f"--quant {self.quant!r}: use nf4, int8 or none")
        for name in ("max_batch_size", "max_queue", "max_adapters", "adapter_memory_mb", "default_max_new_tokens",
                     "max_new_tokens_limit", "max_merge_adapters", "max_merge_rank"):
            if getattr(self, name) < 1:
                raise BadRequest(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("lora_rank", "gather_cache_mb", "workers", "max_prompt_bytes"):
            if getattr(self, name) < 0:
                raise BadRequest(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(self, name)}")
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
        if not 0 <= self.port <= 65535:
            raise BadRequest(f"--port {self.port}: must be between 0 and 65535")

    @property
    def handler_threads(self) -> int:
        """gRPC handler threads: enough for a full batch and a full queue, so the queue limit is what rejects."""
        return self.workers or self.max_batch_size + self.max_queue + 16

    @property
    def max_blob_bytes(self) -> int:
        return int(self.max_blob_mb * 2**20)

