"""Human-readable views of `reg show` and `reg diff` (the JSON views print the same data raw)."""

from __future__ import annotations

import json
import re

from rich.console import Console

from .output import human_size, short, table


def render_show(console: Console, info: dict) -> None:
    v = info["version"]
    adapter = info["adapter"]
    here = info["aliases_here"]
    console.print(f"[bold]{v['ref']}[/bold]" + (f"  aliases: {', '.join(here)}" if here else ""))
    rows = [
        ("manifest", v["manifest_digest"]),
        ("base", f"{v['base_name']}  {short(v['base_digest'], 16)}"),
        ("peft", f"{v['peft_type']}" + (f"  r={v['rank']}" if v["rank"] else "") + (f"  alpha={v['alpha']:g}" if v["alpha"] else "")
         + (f"  task={v['task_type']}" if v["task_type"] else "")),
        ("targets", ", ".join(v["target_modules"]) if v["target_modules"] else "-"),
        ("size", f"{human_size(v['size_bytes'])} in {len(v['files'])} files"),
        ("created", f"{v['created_at'][:19]} by {v['creator']}"),
        ("parent", f"{v['ref'].split(':')[0]}:{v['parent']}" if v["parent"] else "-"),
        ("message", v["message"] or "-"),
    ]
    for key, value in rows:
        console.print(f"  {key:<9} {value}")
    all_aliases = ", ".join(f"{a}->{n}" for a, n in adapter["aliases"].items()) or "none"
    recent = ", ".join(str(n) for n in adapter["recent_versions"])
    more = ", ..." if adapter["live_versions"] > len(adapter["recent_versions"]) else ""
    console.print(f"  adapter   {adapter['name']}: {adapter['live_versions']} live versions ({recent}{more}); aliases {all_aliases}")

    files = table("PATH", "SIZE", "SHA256", title="Files")
    for f in v["files"]:
        files.add_row(f["path"], human_size(f["size"]), f["sha256"][:16])
    console.print(files)

    console.print("[bold]Lineage[/bold]")
    run = info["run"]
    if run is None:
        console.print("  no training run recorded (pushed from a directory)")
    else:
        _render_run(console, run)

    console.print("[bold]Evaluations[/bold]")
    if not info["evaluations"]:
        console.print("  none recorded")
    for ev in info["evaluations"]:
        if ev.get("passed") is False:
            console.print(f"  [bold red]FAILED[/bold red] {ev['name']}/{ev['split']}: " + "; ".join(ev.get("failures") or []))
        elif ev.get("passed"):
            console.print(f"  passed {ev['name']}/{ev['split']} thresholds")
        base = ev.get("base_metrics") or {}
        for key, value in ev["metrics"].items():
            against = f"  (base {_fmt(base[key])}, delta {_fmt(value - base[key])})" if isinstance(base.get(key), (int, float)) and isinstance(value, (int, float)) else ""
            console.print(f"  {ev['name']}/{ev['split']} {key}: {_fmt(value)}{against}")
    if info.get("exports"):
        _render_exports(console, info["exports"])


def _render_exports(console: Console, exports: list[dict]) -> None:
    from rich.markup import escape

    console.print("[bold]Exports[/bold]")
    for e in exports:
        sources = " + ".join(s["ref"] if len(e["sources"]) == 1 and s["weight"] == 1 else f"{s['ref']}*{s['weight']:g}"
                             for s in e["sources"])
        method = f" ({e['method']})" if len(e["sources"]) > 1 else ""
        where = escape(e["out_path"] or "-") + (f", uploaded to {e['hub_repo']}" if e.get("hub_repo") else "")
        fid = e.get("fidelity") or {}
        check = f"max diff {fid['max_abs_diff']:.2g}, top-1 {fid['top1_agreement']:.1%}" if fid else "no check"
        status = "passed" if e["status"] == "passed" else "[bold red]FAILED[/bold red]"
        console.print(f"  #{e['id']} {e['created_at'][:19]} {status} {sources}{method} -> "
                      f"{e['format']} {e['dtype']} {where} ({check})")
        if e["status"] != "passed":
            console.print(f"      {escape(e.get('reason') or '')}")


def _render_run(console: Console, run: dict) -> None:
    console.print(f"  run        {run['id']} ({run['status']}, {run.get('duration_s') or 0:.0f} s)")
    console.print(f"  config     {run.get('config_hash') or '-'}")
    console.print(f"  base       {run.get('base_name')} {short(run.get('base_digest'), 16)}")
    console.print(f"  seed       {run.get('seed')}")
    for ds in run.get("datasets") or []:
        console.print(f"  dataset    {ds.get('path')} {short(ds.get('sha256'), 16)} " + json.dumps(ds.get("counts", {})))
    libs = run.get("libraries") or {}
    if libs:
        console.print("  libraries  " + ", ".join(f"{k} {v}" for k, v in libs.items()))
    hw = run.get("hardware") or {}
    if hw:
        console.print("  hardware   " + ", ".join(f"{k}={v}" for k, v in hw.items()))
    if run.get("run_dir"):
        console.print(f"  run dir    {run['run_dir']}")


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _shape_change(c: dict) -> str:
    shape = f"{c['shape'][0]} -> {c['shape'][1]}" if c["shape"][0] != c["shape"][1] else f"{c['shape'][0]}"
    return shape + ("" if c["same_bytes"] else " (values differ)")


def _grouped(lines: list[str]) -> list[tuple[str, int]]:
    """Collapse per-layer lines (`layers.0.`, `layers.1.`, ...) into one pattern with a count."""
    counts: dict[str, int] = {}
    for line in lines:
        key = re.sub(r"\.\d+\.", ".N.", line.replace("base_model.model.", "", 1))
        counts[key] = counts.get(key, 0) + 1
    return list(counts.items())


def render_diff(console: Console, d: dict) -> None:
    console.print(f"[bold]{d['a']} -> {d['b']}[/bold]" + ("  (identical content)" if d["same_content"] else ""))
    for key, (a, b) in d["fields"].items():
        console.print(f"  {key}: {a} -> {b}")
    if d["config"]:
        console.print("[bold]adapter_config.json[/bold]")
        for key, (a, b) in d["config"].items():
            console.print(f"  {key}: {json.dumps(a)} -> {json.dumps(b)}")
    files = d["files"]
    for kind in ("added", "removed", "changed"):
        if files[kind]:
            console.print(f"  files {kind}: {', '.join(files[kind])}")
    t = d["tensors"]
    console.print(f"[bold]tensors[/bold] {len(t['changed'])} changed, {len(t['added'])} added, "
                  f"{len(t['removed'])} removed, {t['unchanged']} unchanged")
    for pattern, count in _grouped([f"~ {c['name']} {_shape_change(c)}" for c in t["changed"]]):
        console.print(f"  {pattern}" + (f"  x{count}" if count > 1 else ""))
    for pattern, count in _grouped([f"+ {n}" for n in t["added"]] + [f"- {n}" for n in t["removed"]]):
        console.print(f"  {pattern}" + (f"  x{count}" if count > 1 else ""))
    if d["metrics"]:
        console.print("[bold]metrics[/bold]")
        for key, m in d["metrics"].items():
            delta = f" ({m['delta']:+.4g})" if m["delta"] is not None else ""
            console.print(f"  {key}: {_fmt(m['a'])} -> {_fmt(m['b'])}{delta}")


def render_evaluation(console: Console, ev: dict) -> None:
    """Adapter vs base, metric by metric, then a few sample answers side by side."""
    adapter, base = ev["adapter"], ev["base"]
    t = table("METRIC", "ADAPTER", "BASE", "DELTA", title="Held-out evaluation")
    for key in adapter:
        a, b = adapter.get(key), base.get(key)
        delta = f"{a - b:+.4g}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) else ""
        t.add_row(key, _fmt(a), _fmt(b), delta)
    console.print(t)
    if ev.get("overfitting", {}).get("flag"):
        console.print(f"[yellow]overfitting:[/yellow] {ev['overfitting']['why']}")
    if ev.get("failures"):
        console.print("[bold red]evaluation FAILED:[/bold red] " + "; ".join(ev["failures"]) + " (the version is still pushed, marked)")
    samples = ev.get("samples") or []
    if samples:
        s = table("PROMPT", "REFERENCE", "BASE", "ADAPTER", title="Samples")
        for row in samples:
            s.add_row(*(str(row.get(k) or "")[:60] for k in ("prompt", "reference", "base", "adapter")))
        console.print(s)
