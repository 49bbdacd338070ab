#!/usr/bin/env python
"""The HTTP API against gRPC: the same closed-loop load over both fronts of one `reg serve`, side by side.

    python load_tests/bench_http.py [--home DIR] [--base NAME] [--quant nf4|int8|none] [--adapters 16]
        [--concurrency 16] [--rounds 4] [--duration 20] [--warmup 5] [--max-new-tokens 32] [--quick]
        [--json OUT] [--markdown OUT]
    python -m load_tests.bench_http ...   (the same)

A benchmark, not a test: it prints a markdown table and exits 0 (1 only if the server would not start).
It makes --adapters adapters on the base with `python -m load_tests prepare`'s code (idempotent; they stay
in --home), starts one `reg serve --port P --http-port H --max-adapters N` in a child process (so the load
generator's threads never share an interpreter with the server), and drives it with the load generator
(load_tests/run.py) through its two transports (load_tests/protocols.py): --concurrency closed-loop
clients, the adapters in round-robin, one user message each through the chat template, greedy,
--max-new-tokens. gRPC calls Generate; HTTP posts the same request to /v1/chat/completions.

First one warmup round per protocol (every adapter loaded, nothing measured), then --rounds pairs of
rounds, interleaved (gRPC then HTTP, then HTTP then gRPC, ...; both rounds of a pair draw the same seeded
requests), so drift and background load on a shared machine fall on both alike. Reported per protocol:
requests/s and output tokens/s, latency p50/p99, the transport overhead (client latency less the server's
own total time, which both protocols report) and CPU per request of the generator and of the server; per
pair: HTTP/gRPC throughput, the added p50 latency and the added p50 overhead; the verdicts use the medians
over the pairs. When a request takes seconds, the p50 latencies of two rounds differ by far more than 5 ms
from noise alone; the added overhead, taken request by request, is the number that resolves milliseconds. Targets (issue 14): throughput ratio >= 0.95,
added p50 latency < 5 ms. `--quick` (4 adapters, 4 clients, 2 pairs of 1.5 s rounds, 4 tokens) is the CI
smoke run of the script on a tiny model: it checks that the script works, not the speed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROTOCOLS = ("grpc", "http")
TARGET_RATIO = 0.95
TARGET_ADDED_P50_MS = 5.0
QUICK = {"adapters": 4, "concurrency": 4, "rounds": 2, "duration": 1.5, "warmup": 1.0, "max_new_tokens": 4}


def parse_args(argv: list[str] | None):
    from registry.bases import DEFAULT_BASE

    ap = argparse.ArgumentParser(prog="load_tests/bench_http.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", type=Path, default=None, help="Registry home (default: $LORADOCK_HOME, else ~/.loradock).")
    ap.add_argument("--base", default=DEFAULT_BASE, help="The base to serve (registered name, directory or hub id).")
    ap.add_argument("--quant", default="nf4", help="The server's --quant.")
    ap.add_argument("--adapters", type=int, default=16, help="Adapters in the mix (load-00 ...), all in the cache.")
    ap.add_argument("--concurrency", type=int, default=16, help="Closed-loop clients.")
    ap.add_argument("--rounds", type=int, default=4, help="Pairs of rounds (one per protocol each).")
    ap.add_argument("--duration", type=float, default=20.0, help="Seconds per round.")
    ap.add_argument("--warmup", type=float, default=30.0, help="Seconds of unmeasured load per protocol first.")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="max_new_tokens (HTTP: max_tokens) per request.")
    ap.add_argument("--startup-timeout", type=float, default=600.0, help="Seconds to wait for the server to answer.")
    ap.add_argument("--quick", action="store_true", help="The CI smoke run: " + ", ".join(f"{k} {v}" for k, v in QUICK.items()))
    ap.add_argument("--json", dest="json_out", type=Path, help="Write the results as JSON here.")
    ap.add_argument("--markdown", type=Path, help="Write the markdown table here.")
    args = ap.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    for name in ("adapters", "concurrency", "rounds", "duration", "max_new_tokens"):
        if not getattr(args, name) > 0:
            ap.error(f"--{name.replace('_', '-')} {getattr(args, name)}: must be positive")
    return args


def log(msg: str) -> None:
    print(f"[bench-http {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Server:
    """`reg serve` with gRPC on one port and HTTP on another, in a child process; its log in a file."""

    def __init__(self, args, log_path: Path):
        from load_tests import free_ports

        self.grpc_port, self.http_port = free_ports(2)
        self.log_path = log_path
        command = [sys.executable, "-c", "from cli.main import run; run()", "serve", "--base", args.base,
                   "--quant", args.quant, "--port", str(self.grpc_port), "--http-port", str(self.http_port),
                   "--max-adapters", str(args.adapters), *(["--home", str(args.home)] if args.home else [])]
        log(f"$ reg {' '.join(command[3:])}")
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(command, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT)

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def wait_ready(server: Server, transports: dict, timeout: float) -> dict:
    """ServerInfo per protocol, once both fronts answer; SystemExit with the server's log if it dies or times out."""
    deadline = time.monotonic() + timeout
    infos: dict = {}
    while len(infos) < len(transports):
        for protocol, transport in transports.items():
            if protocol not in infos:
                try:
                    infos[protocol] = transport.server_info(ready_timeout=2.0)
                except Exception:  # noqa: BLE001 - not up yet
                    pass
        if len(infos) == len(transports):
            break
        if server.proc.poll() is not None or time.monotonic() > deadline:
            why = f"exited {server.proc.returncode}" if server.proc.poll() is not None else f"no answer in {timeout:g} s"
            raise SystemExit(f"bench-http: the server {why}; its log:\n{server.tail()}")
        time.sleep(0.5)
    return infos


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process has used so far (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def run_round(transport, options, choices, prompts, name: str, seed: int, server_pid: int) -> dict:
    """One closed-loop round over one transport: the report's summary of its samples, plus where the CPU went
    (on a machine whose cores are all busy, a front's CPU per request is what its throughput pays for)."""
    from load_tests.report import summarize
    from load_tests.run import OK, LoadGenerator
    from load_tests.workload import Workload

    workload = Workload(choices, prompts, keys=options.keys, mix="round-robin", seed=seed)
    gen = LoadGenerator(transport, workload, options, live=False)
    client_cpu, server_cpu = time.process_time(), cpu_seconds(server_pid)
    phase = gen.closed_loop(name, options.concurrency, options.duration)
    client_cpu, server_after = time.process_time() - client_cpu, cpu_seconds(server_pid)
    summary = summarize(gen.samples, phase.duration_s)
    done = max(len(gen.samples), 1)
    summary["client_cpu_ms_per_request"] = round(client_cpu * 1000 / done, 2)
    summary["server_cpu_ms_per_request"] = round((server_after - server_cpu) * 1000 / done, 2) \
        if server_cpu is not None and server_after is not None else None
    summary["duration_s"] = round(phase.duration_s, 3)
    summary["versions"] = sorted({s.version for s in gen.samples if s.code == OK})
    summary["error_examples"] = {code: next(s.detail for s in gen.samples if s.code == code) for code in summary["errors"]}
    return summary


def pair_numbers(grpc: dict, http: dict) -> dict:
    ratio = http["ok_per_s"] / grpc["ok_per_s"] if grpc["ok_per_s"] else float("nan")
    tokens = http["output_tokens_per_s"] / grpc["output_tokens_per_s"] if grpc["output_tokens_per_s"] else float("nan")
    return {"throughput_ratio": round(ratio, 4), "tokens_ratio": round(tokens, 4),
            "added_p50_ms": round(http["latency_ms"]["p50"] - grpc["latency_ms"]["p50"], 2),
            "added_overhead_p50_ms": round(http["overhead_ms"]["p50"] - grpc["overhead_ms"]["p50"], 2)
            if http["overhead_ms"]["p50"] and grpc["overhead_ms"]["p50"] else None}


def median_of(rows: list[dict], key: str):
    values = [r[key] for r in rows if r[key] is not None]
    return round(statistics.median(values), 4) if values else None


def bench(args) -> dict:
    from load_tests.protocols import open_transport
    from load_tests.prepare import prepare_adapters
    from load_tests.run import LoadOptions
    from load_tests.workload import AdapterChoice, load_prompts
    from registry import Registry

    registry = Registry(args.home)
    try:
        made = prepare_adapters(registry, args.base, args.adapters, canary=False)
    finally:
        registry.close()
    choices = [AdapterChoice(p.ref.split(":")[0], 1.0) for p in made]
    prompts = load_prompts()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        server = Server(args, Path(tmp) / "server.log")
        try:
            options = {p: LoadOptions(target=f"127.0.0.1:{server.http_port if p == 'http' else server.grpc_port}",
                                      protocol=p, concurrency=args.concurrency, duration=args.duration,
                                      max_new_tokens=args.max_new_tokens, keys=1000, timeout=300.0)
                       for p in PROTOCOLS}
            transports = {p: open_transport(o) for p, o in options.items()}
            try:
                wait_ready(server, transports, args.startup_timeout)
                log(f"serving: gRPC on {server.grpc_port}, HTTP on {server.http_port}; warmup {args.warmup:g} s each")
                for p in PROTOCOLS:
                    if args.warmup > 0:
                        warm = dataclasses.replace(options[p], duration=args.warmup)
                        run_round(transports[p], warm, choices, prompts, f"warmup-{p}", 10_000, server.proc.pid)
                rounds = []
                for i in range(args.rounds):
                    order = PROTOCOLS if i % 2 == 0 else PROTOCOLS[::-1]
                    pair = {}
                    for p in order:
                        pair[p] = run_round(transports[p], options[p], choices, prompts, f"{p}-{i}", i, server.proc.pid)
                        log(f"round {i + 1}/{args.rounds} {p}: {pair[p]['ok']} ok, {pair[p]['ok_per_s']:.2f} req/s, "
                            f"p50 {pair[p]['latency_ms']['p50']:.1f} ms, errors {pair[p]['errors'] or 'none'}")
                    rounds.append({"order": list(order), **pair, **pair_numbers(pair["grpc"], pair["http"])})
                stats = transports["grpc"].stats()[0]
            finally:
                for transport in transports.values():
                    transport.close()
        finally:
            code = server.stop()
            log(f"server stopped (exit {code})")
    return {
        "tool": "load_tests/bench_http.py", "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"cpus": os.cpu_count(), "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
        "adapters": [c.ref for c in choices],
        "rounds": rounds,
        "totals": {p: {k: sum(r[p][k] for r in rounds) for k in ("requests", "ok")} for p in PROTOCOLS},
        "errors": {p: sorted({code for r in rounds for code in r[p]["errors"]}) for p in PROTOCOLS},
        "median": {k: median_of(rounds, k) for k in ("throughput_ratio", "tokens_ratio", "added_p50_ms",
                                                        "added_overhead_p50_ms")},
        "cpu_ms_per_request": {p: {side: median_of([r[p] for r in rounds], f"{side}_cpu_ms_per_request")
                                   for side in ("client", "server")} for p in PROTOCOLS},
        "server_total_requests": stats.total_requests if stats is not None else None,
    }


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "MISSED")


def markdown(results: dict) -> str:
    a, m = results["args"], results["median"]
    lines = [f"HTTP vs gRPC, one `reg serve` ({a['base']}, {a['quant']}): {a['concurrency']} closed-loop clients, "
             f"{len(results['adapters'])} adapters round-robin, {a['max_new_tokens']} new tokens, "
             f"{a['rounds']} interleaved pairs of {a['duration']:g} s rounds; load average before/after "
             f"{results['machine']['loadavg_before'][0]} / {results['machine']['loadavg_after'][0]} "
             f"on {results['machine']['cpus']} CPUs", "",
             "| round | protocol | requests | ok | errors | req/s | out tok/s | latency p50 / p99 ms | overhead p50 ms "
             "| CPU ms/request client / server |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(results["rounds"], start=1):
        for p in r["order"]:
            s = r[p]
            errors = ", ".join(f"{k} {v}" for k, v in s["errors"].items()) or "0"
            overhead = f"{s['overhead_ms']['p50']:.2f}" if s["overhead_ms"]["p50"] else "-"
            lines.append(f"| {i} | {p} | {s['requests']} | {s['ok']} | {errors} | {s['ok_per_s']:.2f} | "
                         f"{s['output_tokens_per_s']:.1f} | {s['latency_ms']['p50']:.1f} / {s['latency_ms']['p99']:.1f} | "
                         f"{overhead} | {s['client_cpu_ms_per_request']} / {s['server_cpu_ms_per_request'] or '-'} |")
    lines += ["", "| per pair (median over pairs) | value | target | |", "|---|---|---|---|"]
    ratio, added = m["throughput_ratio"], m["added_p50_ms"]
    lines.append(f"| throughput HTTP / gRPC (requests/s) | {ratio} | >= {TARGET_RATIO} | "
                 f"{verdict(None if ratio is None else ratio >= TARGET_RATIO)} |")
    lines.append(f"| output tokens/s HTTP / gRPC | {m['tokens_ratio']} | | |")
    lines.append(f"| added p50 latency (HTTP p50 - gRPC p50) | {added} ms | < {TARGET_ADDED_P50_MS:g} ms | "
                 f"{verdict(None if added is None else added < TARGET_ADDED_P50_MS)} |")
    overhead = m["added_overhead_p50_ms"]
    lines.append(f"| added transport overhead p50 (HTTP - gRPC, each: client latency - server's own time) | "
                 f"{'-' if overhead is None else f'{overhead} ms'} | < {TARGET_ADDED_P50_MS:g} ms | "
                 f"{verdict(None if overhead is None else overhead < TARGET_ADDED_P50_MS)} |")
    cpu = results["cpu_ms_per_request"]
    for side in ("client", "server"):
        lines.append(f"| {side} CPU per request, gRPC / HTTP | {cpu['grpc'][side]} / {cpu['http'][side]} ms | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from load_tests import use_offline_hub

    use_offline_hub()
    args = parse_args(argv)
    results = bench(args)
    table = markdown(results)
    print(table, end="")
    if args.markdown:
        args.markdown.write_text(table)
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":  # `python load_tests/bench_http.py`: make the repository importable first (only when run so)
    sys.path.insert(0, str(REPO))
    sys.exit(main())
