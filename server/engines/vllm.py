"""The vLLM engine (`reg serve --engine vllm`): vLLM batches, attends and runs the LoRA kernels; loradock keeps the rest.

Routing, rollouts, the registry and its digest checks, base compatibility, per-request merges, auth, the gRPC and
HTTP APIs, feedback and stats stay in the service (`server/service.py`), which sees this engine through
`server.engines.Engine` like the native one. vLLM runs as a child process that this engine starts and stops, in its
own environment (`--vllm-python`: a python with vLLM and loradock's plugin, integrations/vllm), serving its
OpenAI API on a private port on 127.0.0.1 with runtime LoRA loading on. Why a child process rather than vLLM's
engine API in-process: vLLM pins a transformers this environment cannot take, so the two cannot share an
interpreter; and a crash of vLLM's engine cannot take the server's fronts down with it.

The adapter cache places adapters in this engine's slots as in the native one: placing a version's (pulled,
verified) directory in a slot loads it into vLLM under a name of its content (`POST /v1/load_lora_adapter`);
clearing the slot unloads it. A request for a slot is sent with that name as its `model`, so vLLM never resolves a
ref itself: a push or an alias move takes effect on the next request, as with the native engine. A per-request
merge is computed by loradock (the same math, `registry.modeling.merge`), written as a PEFT directory, and loaded
the same way; the cache keys it by its parts, as for the native engine. Requests go as token ids (the service
tokenizes and applies the chat template) and stream back over Server-Sent Events; a cancelled request's connection
is closed, which makes vLLM abort it.

vLLM's own scheduler decides what runs: `batch_size` and `queue_depth` are loradock's count of requests it has
sent, split at --max-batch-size (vLLM's --max-num-seqs); `queue_ms` is the time to vLLM's response headers.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from registry.errors import InvalidInput, LoradockError, TooLarge, Unavailable

from ..errors import BadRequest, QueueFull, ServerShuttingDown
from . import EngineRequest, EngineResult, EngineStats

log = logging.getLogger(__name__)

PYTHON_ENV = "LORADOCK_VLLM_PYTHON"
STARTUP_TIMEOUT_S = 1800.0  # loading the base and vLLM's warm-up; on a cold GPU node minutes
REQUEST_TIMEOUT_S = 3600.0  # one streamed request (the service's own deadline cancels long before)
CONTROL_TIMEOUT_S = 300.0  # a load or unload of an adapter
# vLLM's --max-lora-rank takes one of these.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
FINISH_REASONS = {"stop": "stop", "length": "length", "abort": "cancelled"}


@dataclass
class VllmAdapter:
    """An adapter as vLLM loads it (`server.engines.SlotWeights`): a PEFT directory and the name it is loaded as."""

    name: str
    path: Path
    rank: int
    nbytes: int
    owned: bool = False  # a merge's directory, written by this engine: removed when its slot is cleared


class VllmSlots:
    """`server.engines.AdapterSlots` over vLLM's loaded adapters: slot N holds one name vLLM knows."""

    def __init__(self, engine: "VllmEngine", max_slots: int, max_rank: int):
        self._engine = engine
        self.max_slots = max_slots
        self._max_rank = max_rank
        self.assigned: dict[int, VllmAdapter] = {}

    @property
    def max_rank(self) -> int:
        return self._max_rank

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.assigned.values())

    @property
    def gathered_nbytes(self) -> int:
        return 0

    def assign(self, slot: int, weights: VllmAdapter) -> None:
        self.clear(slot)
        self._engine.control("/v1/load_lora_adapter", {"lora_name": weights.name, "lora_path": str(weights.path)})
        self.assigned[slot] = weights

    def clear(self, slot: int) -> None:
        adapter = self.assigned.pop(slot, None)
        if adapter is None:
            return
        try:
            self._engine.control("/v1/unload_lora_adapter", {"lora_name": adapter.name})
        finally:
            if adapter.owned:
                shutil.rmtree(adapter.path, ignore_errors=True)

    def shrink_to_fit(self) -> None:
        """vLLM sized its LoRA slots at start (--max-lora-rank): nothing to give back."""

    def model_for(self, slot: int) -> str | None:
        """The `model` a request for `slot` names (None: the base)."""
        return self.assigned[slot].name if slot else None


@dataclass
class _Request:
    request: EngineRequest
    submitted_at: float
    events: "list" = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    conn: http.client.HTTPConnection | None = None
    cancelled: bool = False
    result: EngineResult | None = None


class VllmHandle:
    """`server.engines.Handle` of a request streamed from vLLM."""

    def __init__(self, req: _Request, engine: "VllmEngine"):
        self._req = req
        self._engine = engine

    @property
    def request_id(self) -> str:
        return self._req.request.request_id

    @property
    def cancelled(self) -> bool:
        return self._req.cancelled

    def cancel(self) -> None:
        self._engine.cancel(self._req)

    def deltas(self, timeout: float | None = None) -> Iterator[str]:
        deadline = None if timeout is None else time.monotonic() + timeout
        sent = 0
        while True:
            with self._req.cond:
                while sent >= len(self._req.events) and self._req.result is None:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise TimeoutError
                    self._req.cond.wait(remaining)
                pending, done = self._req.events[sent:], self._req.result is not None
            sent += len(pending)
            yield from pending
            if done and sent >= len(self._req.events):
                return

    def result(self, timeout: float | None = None) -> EngineResult:
        with self._req.cond:
            if not self._req.cond.wait_for(lambda: self._req.result is not None, timeout):
                raise TimeoutError
        if self._req.result.error is not None:
            raise self._req.result.error
        return self._req.result


class VllmEngine:
    """The engine over a vLLM child process (see the module docstring); `start()` launches it and waits for it."""

    def __init__(self, base, options, tokenizer, meta_model, command: list[str], env: dict, port: int):
        self.base = base
        self.tokenizer = tokenizer
        self.context_len = int(getattr(meta_model.config, "max_position_embeddings", 2048) or 2048)
        self.max_batch_size = options.max_batch_size
        self.max_queue = options.max_queue
        self.lock = threading.Lock()  # adapter slot writes (loads and unloads) take it, as with the native engine
        self._meta_model = meta_model  # the base's modules on the meta device: shapes to check adapters against
        self.slots = VllmSlots(self, options.max_adapters, lora_rank_for(options.lora_rank))
        self._command, self._env, self.port = command, env, port
        self._proc: subprocess.Popen | None = None
        self._log = None
        self._inflight: dict[int, _Request] = {}  # id(request) -> request, from submit to its end
        self._inflight_lock = threading.Lock()
        self._idle = threading.Condition(self._inflight_lock)
        self._accepting = True
        self._merges = Path(tempfile.mkdtemp(prefix="loradock-vllm-merges-"))
        self.decode_tokens = 0
        self.decode_seconds = 0.0
        self._stopped = threading.Event()

    # --- lifecycle ----------------------------------------------------------------------------------------------

    def start(self, thread: bool = True) -> "VllmEngine":
        """`thread` makes no difference: vLLM's loop runs in its own processes."""
        log_path = self._merges / "vllm.log"
        self._log = log_path.open("w")
        log.info("starting vLLM: %s (its log: %s)", shlex.join(self._command), log_path)
        # its launcher stops it when this process dies (loradock_vllm.serve, LORADOCK_VLLM_PARENT)
        self._proc = subprocess.Popen(self._command, env={**self._env, "LORADOCK_VLLM_PARENT": str(os.getpid())},
                                      stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self._healthy():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
                self._kill()
                why = f"exited {self._proc.returncode}" if self._proc.poll() is not None else \
                    f"did not answer within {STARTUP_TIMEOUT_S:g} s"
                raise Unavailable(f"vLLM {why}: {tail[0][:300]} (its log: {log_path})")
            time.sleep(0.5)
        log.info("vLLM serves %s on 127.0.0.1:%d", self.base.name, self.port)
        return self

    def stop_accepting(self) -> None:
        self._accepting = False

    def stop(self, drain_s: float = 0.0) -> None:
        self.stop_accepting()
        with self._idle:
            self._idle.wait_for(lambda: not self._inflight, timeout=drain_s)
        with self._inflight_lock:
            inflight = list(self._inflight.values())
        for req in inflight:
            self.cancel(req)
        self._kill()
        shutil.rmtree(self._merges, ignore_errors=True)
        self._stopped.set()

    def run(self) -> None:
        """Nothing to run on the caller's thread (vLLM works in its own processes): wait for `stop()`."""
        self._stopped.wait()

    def _kill(self) -> None:
        if self._proc is not None:
            stop_process_group(self._proc)
        if self._log is not None:
            self._log.close()

    def _healthy(self) -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            conn.request("GET", "/health")
            return conn.getresponse().status == 200
        except OSError:
            return False

    # --- requests -----------------------------------------------------------------------------------------------

    def check_room(self) -> None:
        if not self._accepting:
            raise ServerShuttingDown("the server is shutting down and takes no new requests")
        if len(self._inflight) >= self.max_batch_size + self.max_queue:
            raise QueueFull(f"queue full ({self.max_queue} requests waiting); retry later")

    def submit(self, request: EngineRequest) -> VllmHandle:
        req = _Request(request, submitted_at=time.monotonic())
        with self._inflight_lock:
            self.check_room()
            self._inflight[id(req)] = req
        threading.Thread(target=self._run, args=(req,), name=f"loradock-vllm-{request.request_id[:16]}",
                         daemon=True).start()
        return VllmHandle(req, self)

    def cancel(self, req: _Request) -> None:
        req.cancelled = True
        conn = req.conn
        if conn is not None and conn.sock is not None:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)  # the reader wakes; vLLM sees the disconnect and aborts it
            except OSError:
                pass

    def _body(self, request: EngineRequest) -> dict:
        s = request.sampling
        body = {"prompt": request.prompt_ids, "max_tokens": s.max_new_tokens, "temperature": s.temperature,
                "top_p": s.top_p, "stream": True, "stream_options": {"include_usage": True},
                "skip_special_tokens": True}
        model = self.slots.model_for(request.slot)
        body["model"] = model or self.base.name
        if s.top_k > 0:
            body["top_k"] = s.top_k
        if s.seed is not None:
            body["seed"] = s.seed
        if s.stop:
            body["stop"] = list(s.stop)
        if s.repetition_penalty != 1.0:
            body["repetition_penalty"] = s.repetition_penalty
        return body

    def _run(self, req: _Request) -> None:
        text, reason, usage, error = [], "stop", {}, None
        admitted = first = None
        try:
            body = self._body(req.request)
            req.conn = conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT_S)
            if req.cancelled:
                raise ConnectionAbortedError
            conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
            reply = conn.getresponse()
            admitted = time.monotonic()
            if reply.status != 200:
                raise _refusal(reply.status, reply.read())
            for chunk in _sse_chunks(reply):
                for choice in chunk.get("choices") or []:
                    delta = choice.get("text") or ""
                    if delta:
                        first = first or time.monotonic()
                        text.append(delta)
                        with req.cond:
                            req.events.append(delta)
                            req.cond.notify_all()
                    if choice.get("finish_reason"):
                        reason = FINISH_REASONS.get(choice["finish_reason"], "stop")
                usage = chunk.get("usage") or usage
        except (OSError, http.client.HTTPException) as exc:
            if req.cancelled:
                reason = "cancelled"
            else:
                reason, error = "error", Unavailable(f"vLLM stopped answering: {type(exc).__name__}: {exc}")
        except LoradockError as exc:
            reason, error = "error", exc
        finally:
            if req.conn is not None:
                req.conn.close()
        if req.cancelled and reason != "error":
            reason = "cancelled"
        self._finish(req, "".join(text), reason, usage, admitted, first, error)

    def _finish(self, req, text, reason, usage, admitted, first, error) -> None:
        end = time.monotonic()
        completion = int(usage.get("completion_tokens") or 0)
        if first is not None and completion > 1:
            self.decode_tokens += completion - 1
            self.decode_seconds += end - first
        result = EngineResult(
            request_id=req.request.request_id, text=text, finish_reason=reason,
            prompt_tokens=int(usage.get("prompt_tokens") or len(req.request.prompt_ids)), completion_tokens=completion,
            queue_ms=((admitted or end) - req.submitted_at) * 1000, ttft_ms=((first or end) - req.submitted_at) * 1000,
            total_ms=(end - req.submitted_at) * 1000, error=error)
        if req.request.on_finish is not None:
            try:
                req.request.on_finish(result)
            except Exception:  # bookkeeping must never take the engine down, nor fail unseen
                log.exception("recording the end of request %s failed", req.request.request_id)
        with req.cond:
            req.result = result
            req.cond.notify_all()
        with self._idle:
            self._inflight.pop(id(req), None)
            self._idle.notify_all()

    def stats(self) -> EngineStats:
        inflight = len(self._inflight)
        return EngineStats(
            batch_size=min(inflight, self.max_batch_size), queue_depth=max(0, inflight - self.max_batch_size),
            max_batch_size=self.max_batch_size, max_queue=self.max_queue,
            decode_tokens_per_s=self.decode_tokens / self.decode_seconds if self.decode_seconds else 0.0,
            slot_memory_bytes=self.slots.nbytes, gathered_memory_bytes=0)

    # --- adapters -----------------------------------------------------------------------------------------------

    def control(self, path: str, body: dict) -> None:
        """POST a load or unload to vLLM; a refusal is one line naming what vLLM said."""
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=CONTROL_TIMEOUT_S)
            conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            reply = conn.getresponse()
            data = reply.read()
        except (OSError, http.client.HTTPException) as exc:
            raise Unavailable(f"vLLM did not answer {path}: {type(exc).__name__}: {exc}") from None
        if reply.status != 200:
            raise _refusal(reply.status, data, f"vLLM refused {path} for {body.get('lora_name')}")

    def load_adapter(self, adapter_dir: Path) -> VllmAdapter:
        from registry.modeling.lora import read_lora

        from ..lora import check_fits

        weights = read_lora(adapter_dir, "serve")  # plain LoRA only (AdapterIncompatible otherwise), as vLLM serves
        check_fits(weights, self._meta_model)
        self._check_rank(str(adapter_dir.name), weights.rank)
        return VllmAdapter(f"loradock-{adapter_dir.name}", adapter_dir, weights.rank, weights.nbytes)

    def adapter_from_tensors(self, adapter) -> VllmAdapter:
        """A merge, written as a PEFT directory for vLLM to load; removed when its slot is cleared."""
        from registry.modeling.merge import write_lora_adapter

        from ..lora import check_fits

        check_fits(adapter, self._meta_model)
        self._check_rank("the merge", adapter.rank)
        name = f"loradock-merge-{uuid.uuid4().hex[:16]}"
        path = write_lora_adapter(adapter, self._merges / name, str(self.base.path))
        return VllmAdapter(name, path, adapter.rank, adapter.nbytes, owned=True)

    def check_slot_memory(self, key: str, rank: int, max_bytes: int) -> None:
        self._check_rank(key, rank)

    def _check_rank(self, key: str, rank: int) -> None:
        if rank > self.slots.max_rank:
            raise TooLarge(f"{key[:200]} has rank {rank}: vLLM was started for adapters of rank {self.slots.max_rank} "
                           f"or less; restart with --lora-rank {lora_rank_for(rank)}")


def _sse_chunks(reply) -> Iterator[dict]:
    """The JSON objects of an OpenAI stream (`data: {...}` lines, ended by `data: [DONE]`)."""
    for raw in reply:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            return
        yield json.loads(data)


def _refusal(status: int, body: bytes, what: str = "vLLM refused the request") -> LoradockError:
    try:
        message = json.loads(body).get("error", {}).get("message") or body.decode(errors="replace")
    except (ValueError, AttributeError):
        message = body.decode(errors="replace")
    line = f"{what}: {message.strip().splitlines()[0][:300] if message.strip() else f'HTTP {status}'}"
    return BadRequest(line) if status == 400 else Unavailable(line)


def stop_process_group(proc: subprocess.Popen, grace_s: float = 60.0) -> None:
    """SIGTERM the process group `proc` leads (started with start_new_session), SIGKILL it after `grace_s`.

    Returns once every process of the group is gone, not only its leader: vLLM's engine-core and worker
    processes outlive the API server by seconds, busy on both cores (what ran next measured half its speed)."""
    deadline = time.monotonic() + grace_s
    if proc.poll() is None:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
    killed = False
    while _signal_group(proc.pid, 0):  # members left behind (reparented once the leader exited)
        if time.monotonic() > deadline:
            if killed:  # what is left is not exiting (a zombie nobody reaps): nothing more to wait for
                return
            _signal_group(proc.pid, signal.SIGKILL)
            killed, deadline = True, time.monotonic() + 5
        time.sleep(0.1)


def _signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to process group `pgid` (0: only check it exists); False once no process is in it."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # a member that changed its user: it exists but is not ours to wait for
        return False


def lora_rank_for(rank: int) -> int:
    """The smallest rank vLLM's --max-lora-rank takes that holds `rank`."""
    return next((r for r in VLLM_LORA_RANKS if r >= rank), VLLM_LORA_RANKS[-1])


def vllm_python(options) -> str:
    """--vllm-python, else $LORADOCK_VLLM_PYTHON; checked to import vLLM and loradock's plugin."""
    python = options.vllm_python or os.environ.get(PYTHON_ENV)
    if not python:
        raise InvalidInput(f"--engine vllm needs --vllm-python PATH (or ${PYTHON_ENV}): a python with vLLM and "
                           f"loradock's plugin (pip install integrations/vllm) installed")
    try:
        probe = subprocess.run([python, "-c", "import vllm, loradock_vllm.serve"], capture_output=True, text=True)
        problem = (probe.stderr.strip().splitlines() or ["it did not run"])[-1] if probe.returncode else None
    except OSError as exc:
        problem = exc.strerror or str(exc)
    if problem:
        raise InvalidInput(f"--vllm-python {python}: cannot import vLLM and loradock_vllm ({problem[:200]}); install "
                           f"vLLM and integrations/vllm into that environment")
    return python


def load_vllm_engine(base, options) -> VllmEngine:
    """Check the settings, then build the engine (not started: the service starts it)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    python = vllm_python(options)  # --quant none is checked with the other options (ServerOptions.validate)
    config = AutoConfig.from_pretrained(base.path)
    with torch.device("meta"):
        meta_model = AutoModelForCausalLM.from_config(config)
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    port = _free_port()
    context = int(getattr(config, "max_position_embeddings", 2048) or 2048)
    command = [python, "-m", "loradock_vllm.serve", "serve", str(base.path), "--served-model-name", base.name,
               "--host", "127.0.0.1", "--port", str(port), "--dtype", options.vllm_dtype,
               "--enable-lora", "--max-loras", str(options.max_adapters),
               "--max-lora-rank", str(lora_rank_for(options.lora_rank)), "--max-num-seqs", str(options.max_batch_size),
               "--max-model-len", str(context), *shlex.split(options.vllm_args or "")]
    env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"}
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")  # GiB; read by vLLM's CPU build only
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{(os.cpu_count() or 1) - 1}")
    return VllmEngine(base, options, tokenizer, meta_model, command, env, port)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
