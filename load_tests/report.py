"""The load test report: numbers from the samples, as JSON, a rich table, a CSV and a latency-over-time plot."""

from __future__ import annotations

import csv
import json
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from google.protobuf.message import Message

from server.stats import percentile

from .run import OK, LoadGenerator, LoadOptions, Sample, is_rejection

REJECTION_TARGET_MS = 50.0  # the target for answering the excess under overload


def _pcts(values: list[float]) -> dict:
    return {"p50": round(percentile(values, .5), 2), "p90": round(percentile(values, .9), 2),
            "p95": round(percentile(values, .95), 2), "p99": round(percentile(values, .99), 2), "max": round(max(values), 2) if values else 0.0}


def summarize(samples: list[Sample], elapsed_s: float) -> dict:
    """Counts, errors by status code, latency and TTFT percentiles of the successes, throughput."""
    ok = [s for s in samples if s.code == OK]
    rejected = [s.latency_ms for s in samples if is_rejection(s.code)]
    tokens = sum(s.completion_tokens for s in ok)
    return {
        "requests": len(samples), "ok": len(ok),
        "errors": dict(sorted(Counter(s.code for s in samples if s.code != OK).items())),
        "latency_ms": _pcts([s.latency_ms for s in ok]),
        "ttft_ms": _pcts([s.ttft_ms for s in ok if s.ttft_ms is not None]),
        # client latency less the server's own total: what the transport and both ends' handlers add
        "overhead_ms": _pcts([s.latency_ms - s.server_ms for s in ok if s.server_ms is not None]),
        "rejection_ms": _pcts(rejected),
        "requests_per_s": round(len(samples) / elapsed_s, 3) if elapsed_s else 0.0,
        "ok_per_s": round(len(ok) / elapsed_s, 3) if elapsed_s else 0.0,
        "output_tokens": tokens,
        "output_tokens_per_s": round(tokens / elapsed_s, 3) if elapsed_s else 0.0,
    }


def _grouped(samples: list[Sample], key, elapsed_s: float) -> dict:
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        k = key(s)
        if k is not None:
            groups.setdefault(k, []).append(s)
    return {k: summarize(v, elapsed_s) for k, v in sorted(groups.items())}


def _plain(value):
    """A protobuf message as plain JSON values, every field present, int64 as numbers (MessageToDict quotes them)."""
    if isinstance(value, Message):
        return {f.name: _plain(getattr(value, f.name)) for f in value.DESCRIPTOR.fields}
    if isinstance(value, (str, bytes, int, float, bool)):
        return value
    return [_plain(v) for v in value]  # a repeated field


def _stats_dict(stats) -> dict | None:
    return None if stats is None else _plain(stats)


def _stats_delta(before, after) -> dict | None:
    if before is None or after is None:
        return None
    b, a = before.cache, after.cache
    return {"total_requests": after.total_requests - before.total_requests,
            "cache_hits": a.hits - b.hits, "cache_misses": a.misses - b.misses, "cache_evictions": a.evictions - b.evictions}


def _canary_analysis(samples: list[Sample], canary: dict) -> dict:
    """Per key, did any key go back to the old version after the new one served it (raising must only move keys forward)?"""
    seen_new: set[str] = set()
    moved_back: set[str] = set()
    keys: set[str] = set()
    for s in sorted((s for s in samples if s.code == OK and s.routing_key), key=lambda s: s.started_s):
        keys.add(s.routing_key)
        if s.version == canary["new"]:
            seen_new.add(s.routing_key)
        elif s.version == canary["old"] and s.routing_key in seen_new:
            moved_back.add(s.routing_key)
    windows = []
    bounds = [st["at_s"] for st in canary["steps"]] + [float("inf")]
    for step, start, end in zip(canary["steps"], bounds, bounds[1:]):
        served = [s for s in samples if s.code == OK and start <= s.started_s < end]
        new = sum(s.version == canary["new"] for s in served)
        windows.append({**step, "ok": len(served), "served_by_new": new,
                        "new_share": round(new / len(served), 4) if served else None})
    return {"keys_seen": len(keys), "keys_on_new": len(seen_new), "keys_moved_back": len(moved_back), "steps": windows}


def build(options: LoadOptions, preset: str | None, choices, gen: LoadGenerator, before, after, notes: dict,
          interrupted: bool, alive_after: bool | None = None) -> dict:
    """The report; `alive_after`: the server answered afterwards (default: `after`, its ServerStats, is there)."""
    alive = after is not None if alive_after is None else alive_after
    warmup = set(notes.get("warmup_phases", []))
    measured = [s for s in gen.samples if s.phase not in warmup]
    phases = [p for p in gen.phases if p.name not in warmup]
    elapsed = sum(p.duration_s for p in phases)
    summary = summarize(measured, elapsed)
    lost = sum(s.code != OK and not is_rejection(s.code) for s in measured)
    rejected = [s.latency_ms for s in measured if is_rejection(s.code)]
    delta = _stats_delta(before, after)
    report = {
        "tool": "python -m load_tests run",
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "preset": preset,
        "protocol": options.protocol,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()},
        "adapters_requested": [c.ref for c in choices],
        "duration_s": round(elapsed, 3),
        "interrupted": interrupted,
        **summary,
        "not_sent": sum(p.not_sent for p in phases),
        "ttft_source": "client (first streamed chunk with text)" if options.stream else
        "server (timing.ttft_ms)" if options.protocol == "grpc" else "server (loradock.timing.ttft_ms, where given)",
        "error_examples": {code: next(s.detail for s in measured if s.code == code) for code in summary["errors"]},
        "checks": {
            "server_alive_after": alive,
            "admitted": len(measured) - len(rejected),
            "admitted_completed": summary["ok"],
            "lost": lost,  # neither a response nor a clean RESOURCE_EXHAUSTED
            "rejected": len(rejected),
            "rejected_under_50ms": round(sum(ms < REJECTION_TARGET_MS for ms in rejected) / len(rejected), 4)
            if rejected else None,
            "server_counted": delta["total_requests"] if delta is not None else None,
        },
        "by_adapter": _grouped(measured, lambda s: s.adapter, elapsed),
        "by_version": _grouped(measured, lambda s: s.version or None, elapsed),
        "by_arm": _grouped(measured, lambda s: f"{s.version} [{s.variant}]" if s.variant else None, elapsed),
        "phases": [{**asdict(p), **summarize([s for s in gen.samples if s.phase == p.name], p.duration_s)} for p in gen.phases],
        "marks": [asdict(m) for m in gen.marks],
        "notes": notes,
        "server": {"before": _stats_dict(before), "after": _stats_dict(after), "delta": delta},
    }
    if "canary" in notes:
        report["canary"] = _canary_analysis(measured, notes["canary"])
    if "overload" in notes:
        report["overload"] = {  # the targets: reported here, judged by people (exit 1 only for crash or loss)
            "crashes": 0 if alive else 1, "lost_admitted": lost, "rejected": len(rejected),
            "rejection_p99_ms": summary["rejection_ms"]["p99"] if rejected else None,
            "rejection_target_ms": REJECTION_TARGET_MS,
            "rejection_target_met": summary["rejection_ms"]["p99"] < REJECTION_TARGET_MS if rejected else None,
            "admitted_latency_p99_ms": summary["latency_ms"]["p99"],
        }
    return report


# --- files ----------------------------------------------------------------------------------


def output_paths(out: Path) -> tuple[Path, Path, Path]:
    """(report.json, latency.png, samples.csv): `out` is a directory, or the report's .json path."""
    out = Path(out)
    if out.suffix == ".json":
        return out, out.with_name(out.stem + "-latency.png"), out.with_name(out.stem + "-samples.csv")
    return out / "report.json", out / "latency.png", out / "samples.csv"


def write(report: dict, gen: LoadGenerator, out: Path) -> dict:
    report_path, plot_path, csv_path = output_paths(out)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    plot_latency(gen, plot_path)
    with csv_path.open("w", newline="") as f:
        names = list(Sample.__dataclass_fields__)
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        writer.writerows(asdict(s) for s in gen.samples)
    report["files"] = {"report": str(report_path), "plot": str(plot_path), "samples": str(csv_path)}
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    return report


def plot_latency(gen: LoadGenerator, path: Path) -> None:
    """Latency of every request against when it was sent: successes by version, rejections and errors apart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5), dpi=100)
    ok = [s for s in gen.samples if s.code == OK]
    versions = sorted({s.version or "base" for s in ok})
    many = len(versions) > 10
    for version in versions:
        pts = [s for s in ok if (s.version or "base") == version]
        ax.scatter([s.started_s for s in pts], [s.latency_ms for s in pts], s=6, alpha=.6,
                   label=None if many else version, color="tab:blue" if many else None)
    if many:
        ax.scatter([], [], s=6, color="tab:blue", label=f"ok ({len(versions)} versions)")
    for rejections, style in ((True, dict(marker="x", color="tab:orange")), (False, dict(marker="x", color="tab:red"))):
        pts = [s for s in gen.samples if s.code != OK and is_rejection(s.code) == rejections]
        if pts:
            ax.scatter([s.started_s for s in pts], [max(s.latency_ms, 1e-3) for s in pts], s=10,
                       label=f"{rejected_label(gen.options.protocol) if rejections else 'other errors'} ({len(pts)})", **style)
    for phase in gen.phases[1:]:
        ax.axvline(phase.started_s, color="grey", linestyle="--", linewidth=.8)
    for mark in gen.marks:
        ax.axvline(mark.at_s, color="green", linestyle=":", linewidth=.8)
        ax.annotate(mark.label, (mark.at_s, 1), xycoords=("data", "axes fraction"), rotation=90, va="top", fontsize=7)
    latencies = [s.latency_ms for s in gen.samples if s.latency_ms > 0]
    if latencies and max(latencies) / max(min(latencies), 1e-3) > 100:
        ax.set_yscale("log")
    ax.set_xlabel("sent at (s since start)")
    ax.set_ylabel("latency (ms)")
    ax.set_title("loradock load test: latency over time")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", fontsize=7, markerscale=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --- the table ------------------------------------------------------------------------------


def rejected_label(protocol: str) -> str:
    return "HTTP 429" if protocol == "http" else "RESOURCE_EXHAUSTED"


def render(report: dict, console) -> None:
    from rich.table import Table

    def row_for(name: str, s: dict) -> list[str]:
        errors = ", ".join(f"{k} {v}" for k, v in s["errors"].items()) or "-"
        lat, ttft = s["latency_ms"], s["ttft_ms"]
        return [name, str(s["requests"]), str(s["ok"]), f"{lat['p50']:.0f} {lat['p90']:.0f} {lat['p99']:.0f}",
                f"{ttft['p50']:.0f} {ttft['p90']:.0f} {ttft['p99']:.0f}", f"{s['requests_per_s']:.1f}",
                f"{s['output_tokens_per_s']:.0f}", errors]

    t = Table(title=f"load test{' (' + report['preset'] + ')' if report['preset'] else ''} over {report['protocol']}: "
                    f"{report['duration_s']:.1f} s",
              box=None, header_style="bold", pad_edge=False, title_justify="left")
    for col in ("", "req", "ok", "latency ms\np50 p90 p99", "ttft ms\np50 p90 p99", "req/s", "out\ntok/s", "errors"):
        t.add_column(col, justify="left" if col in ("", "errors") else "right", no_wrap=col != "errors")
    t.add_row(*row_for("all", report))
    for title, group in (("by adapter", "by_adapter"), ("by version", "by_version"), ("by rollout arm", "by_arm")):
        if report[group]:
            t.add_row(f"[bold]{title}[/bold]")
        for name, s in report[group].items():
            t.add_row(*row_for(f"  {name}", s))
    console.print(t)
    checks = report["checks"]
    lines = [f"ttft: {report['ttft_source']}"]
    if report["not_sent"]:
        lines.append(f"not sent (generator at its in-flight limit): {report['not_sent']}")
    if checks["rejected"]:
        rej = report["rejection_ms"]
        lines.append(f"rejected ({rejected_label(report['protocol'])}): {checks['rejected']}, "
                     f"answered in p50 {rej['p50']:.1f} / p99 "
                     f"{rej['p99']:.1f} / max {rej['max']:.1f} ms; under 50 ms: {checks['rejected_under_50ms']:.1%}")
    lines.append(f"admitted {checks['admitted']}, completed {checks['admitted_completed']}, lost {checks['lost']}; "
                 f"server {'answered' if checks['server_alive_after'] else 'DID NOT ANSWER'} "
                 f"{'ServerStats' if report['protocol'] == 'grpc' else 'GET /health'} afterwards")
    delta = report["server"]["delta"]
    if delta:
        lines.append(f"server: +{delta['total_requests']} requests counted, cache +{delta['cache_hits']} hits "
                     f"+{delta['cache_misses']} misses +{delta['cache_evictions']} evictions")
    if "overload" in report:
        o, v = report["notes"]["overload"], report["overload"]
        lines.append(f"overload: capacity {o['capacity_rps']:.2f} req/s ({o['capacity_source']}), driven at {o['rate_rps']:.2f} "
                     f"req/s; crashes {v['crashes']}, lost admitted requests {v['lost_admitted']}, admitted p99 "
                     f"{v['admitted_latency_p99_ms']:.0f} ms")
        if v["rejected"]:
            verdict = "met" if v["rejection_target_met"] else "MISSED"
            lines.append(f"overload: excess rejected in p99 {v['rejection_p99_ms']:.1f} ms "
                         f"(target < {v['rejection_target_ms']:g} ms: {verdict})")
        else:
            lines.append("overload: nothing was rejected: the server queued the excess instead of answering "
                         + rejected_label(report["protocol"]))
    if "canary" in report:
        c = report["canary"]
        shares = ", ".join(f"{w['new_percent']}% -> " + (f"{w['new_share']:.1%}" if w["new_share"] is not None else "-")
                           for w in c["steps"])
        lines.append(f"canary {report['notes']['canary']['new']}: share served by the new arm per step: {shares}; "
                     f"keys moved back to the old arm: {c['keys_moved_back']} of {c['keys_on_new']}")
    lines.append(f"report: {report['files']['report']}  plot: {report['files']['plot']}")
    for line in lines:
        console.print(line)
