"""`reg capture ...`: keep an adapter's served traffic as data (opt-in), see it, curate it into a dataset, delete it.

Storage and bounds are `registry/capture.py`; curation is `trainer/curate.py`. set, show, off and clear work on a
local registry or over `--registry URL` (the same calls, the same output). export leaves out what the champion was
trained on, read from its run's files on the registry's host, so it needs the local registry.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Optional

import typer

from registry.capture import DEFAULT_REDACTIONS, CaptureConfig, require_capture
from registry.units import duration_text, parse_duration, parse_size

from .common import Home, Json, _local_registry, _registry, app
from .output import console, human_size, print_json

capture_app = typer.Typer(
    help="Capture: keep an adapter's served requests and their feedback as data (opt-in), curate it into a dataset.",
    no_args_is_help=True,
)
app.add_typer(capture_app, name="capture")

Name = Annotated[str, typer.Argument(help="Adapter name.")]


@capture_app.command("set")
def capture_set(
    name: Name,
    sample: Annotated[float, typer.Option(help="Share of the adapter's requests kept, 0 < sample <= 1.")] = 1.0,
    retain: Annotated[str, typer.Option(help="Delete captured requests older than this: 30d, 12h, 90m.")] = "30d",
    max_bytes: Annotated[str, typer.Option(help="Most captured text kept for the adapter (oldest go first): 256MB, 1GiB.")] = "256MiB",
    redact: Annotated[Optional[list[str]], typer.Option(
        "--redact", help="A regular expression whose matches are replaced by [redacted] before anything is stored "
                         "(repeatable; added to the defaults: e-mail addresses and card-like numbers).")] = None,
    no_default_redactions: Annotated[bool, typer.Option(
        "--no-default-redactions", help="Drop the default patterns (e-mail addresses, card-like numbers).")] = False,
    home: Home = None,
) -> None:
    """Turn capture on for an adapter (or change its settings); a running server picks it up within seconds."""
    patterns = (() if no_default_redactions else DEFAULT_REDACTIONS) + tuple(redact or ())
    config = CaptureConfig(sample, parse_duration(retain, "--retain"), parse_size(max_bytes, "--max-bytes"), patterns)
    _registry(home).captures.set(name, config)
    console.print(f"capture on for {name}: {config.sample:g} of requests, kept {duration_text(config.retain_s)}, "
                  f"at most {human_size(config.max_bytes)}, {len(config.redact)} redaction pattern(s)")


@capture_app.command("show")
def capture_show(name: Name, json_out: Json = False, home: Home = None) -> None:
    """The adapter's capture settings and what is captured (requests, bytes, with feedback, oldest, newest)."""
    summary = _registry(home).captures.summary(name)
    if json_out:
        print_json(summary)
        return
    if not summary["on"]:
        console.print(f"capture is off for {name}" + (f" ({summary['requests']} captured requests kept)" if summary["requests"] else ""))
    else:
        c = summary["config"]
        console.print(f"capture on for {name}: sample {c['sample']:g}, retain {duration_text(c['retain_s'])}, "
                      f"max {human_size(c['max_bytes'])}; redact: {', '.join(c['redact']) or 'nothing'}")
    console.print(f"{summary['requests']} captured requests ({human_size(summary['bytes'])}), {summary['with_feedback']} "
                  f"with feedback" + (f", {summary['oldest'][:19]} to {summary['newest'][:19]}" if summary["requests"] else ""))


@capture_app.command("export")
def capture_export(
    name: Name,
    out: Annotated[Path, typer.Option("--out", "-o", help="The JSONL file to write (chat, or completion for raw prompts).")],
    since: Annotated[Optional[str], typer.Option(help="Only requests captured within this long: 7d, 12h (default: all).")] = None,
    min_score: Annotated[float, typer.Option(help="Keep requests whose feedback score is at least this (or a positive label).")] = 0.5,
    holdout: Annotated[float, typer.Option(help="Fraction kept out as a fresh evaluation slice (written beside --out).")] = 0.0,
    exclude: Annotated[Optional[str], typer.Option(
        help="A version (NAME:N, NAME@ALIAS) whose training and held-out examples are left out (default: the "
             "adapter's latest version).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of deduplication and of the held-out slice.")] = 0,
    json_out: Json = False,
    home: Home = None,
) -> None:
    """A curated dataset from captured traffic: good feedback (or a correction), deduplicated, nothing already trained on."""
    from trainer.curate import curate, write
    from trainer.heldout import trained_examples

    registry = _local_registry(home, "reg capture export")
    if not registry.captures.summary(name)["requests"]:
        require_capture(registry.captures, name)  # capture never on: say how to turn it on
    cutoff = None
    if since:
        cutoff = (datetime.now(timezone.utc) - timedelta(seconds=parse_duration(since, "--since"))).isoformat(timespec="milliseconds")
    champion = registry.resolve(exclude or name)
    excluded, described = trained_examples(registry, champion)
    curated = curate(registry.captures.rows(name, since=cutoff), min_score=min_score, exclude=excluded, holdout=holdout,
                     seed=seed)
    written = write(curated.train, curated.format, out)
    heldout_path = out.with_name(out.stem + ".heldout" + out.suffix) if curated.heldout else None
    if heldout_path:
        write(curated.heldout, curated.format, heldout_path)
    result = {"adapter": name, "out": str(out), "heldout": str(heldout_path) if heldout_path else None,
              "format": curated.format, "excluded": described, "counts": curated.counts}
    if json_out:
        print_json(result)
        return
    c = curated.counts
    console.print(f"{written} examples -> {out} ({curated.format}); from {c['captured']} captured requests, "
                  f"{c['with_feedback']} with feedback, {c['corrected']} corrected, {c['duplicates']} duplicates and "
                  f"{c['already_trained']} already trained on dropped" + (f"; {c['heldout']} held out -> {heldout_path}" if heldout_path else ""))
    console.print(f"left out: {described}")


@capture_app.command("clear")
def capture_clear(name: Name, home: Home = None) -> None:
    """Delete everything captured of the adapter (requests and corrections); capture stays on unless `reg capture off`."""
    deleted = _registry(home).captures.clear(name)
    console.print(f"deleted {deleted} captured requests of {name}")


@capture_app.command("off")
def capture_off(name: Name, home: Home = None) -> None:
    """Stop capturing the adapter (what is captured stays until `reg capture clear` or its retention)."""
    was_on = _registry(home).captures.off(name)
    console.print(f"capture {'off' if was_on else 'was not on'} for {name}")
