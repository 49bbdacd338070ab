"""`reg export`: merge adapter versions into their base (or write a plain PEFT directory) for production.

Registered on the `reg` app by cli/main.py; the work happens in registry/export/exporter.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from registry import InvalidInput

from .common import Home, Json, _local_registry, app
from .output import console, human_size, print_json


@app.command()
def export(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory; must not exist or be empty (unless --force).")],
    ref: Annotated[Optional[str], typer.Argument(
        help="The version to export: NAME, NAME:N or NAME@ALIAS (or use --merge).")] = None,
    merge: Annotated[Optional[list[str]], typer.Option(
        "--merge", help="Export a weighted combination instead: REF=WEIGHT (repeatable), e.g. --merge arith:3=0.7.")] = None,
    method: Annotated[str, typer.Option(
        help="How --merge combines adapters (PEFT's combination types): cat (the exact weighted sum), linear, svd, ...")] = "cat",
    density: Annotated[Optional[float], typer.Option(
        help="ties, dare_* and magnitude_prune: the fraction of values kept, 0 < density <= 1 (they need it).")] = None,
    majority_sign_method: Annotated[str, typer.Option(
        help="ties and dare_ties: how each entry's sign is elected, total or frequency.")] = "total",
    dtype: Annotated[str, typer.Option(help="Weights of the merged model: bf16, fp16, fp32, or auto (the base's own).")] = "auto",
    max_shard_size: Annotated[str, typer.Option(
        help="Largest safetensors shard (2GB, 500MB, 1GiB); bigger models are split, with an index.")] = "2GB",
    fmt: Annotated[str, typer.Option(
        "--format",
        help="merged: a full model directory (transformers, vLLM, TGI); peft: a plain PEFT adapter directory.")] = "merged",
    force: Annotated[bool, typer.Option(
        help="Replace a non-empty output directory (only once the export has passed its check).")] = False,
    hub_repo: Annotated[Optional[str], typer.Option(
        help="Also upload the result to the Hugging Face Hub as ORG/NAME (needs network access and a token).")] = None,
    json_out: Json = False,
    home: Home = None,
) -> None:
    """Merge an adapter (or a weighted combination) into its full-precision base and write a standard model directory.

    The result is checked before it is reported done: its logits on probe prompts (the version's held-out examples when it has them) must match the base plus the unmerged adapter. Nothing appears in --out unless the check passes; every export, passed or failed, is recorded and listed by `reg show`.
    """
    from registry.export.exporter import ExportRequest, export as run_export, parse_weighted_ref
    from trainer.heldout import held_out_probes

    if ref and merge:
        raise InvalidInput(f"give either REF ({ref}) or --merge REF=WEIGHT, not both")
    sources = [(ref, 1.0)] if ref else [parse_weighted_ref(item) for item in merge or []]
    request = ExportRequest(sources=sources, out=out, method=method, density=density,
                            majority_sign_method=majority_sign_method, fmt=fmt, dtype=dtype, max_shard_size=max_shard_size,
                            force=force, hub_repo=hub_repo)
    reg = _local_registry(home, "reg export")  # it records the export and reads the base's files
    result = run_export(reg, request, find_probes=lambda versions: held_out_probes(reg, versions))
    if json_out:
        print_json(result.to_dict())
        return
    label = " + ".join(f"{s['ref']}×{s['weight']:g}" for s in result.sources) if ref is None else result.sources[0]["ref"]
    size = sum(f["size"] for f in result.files)
    console.print(f"{label} -> {result.out} ({result.format}, {result.dtype}, {len(result.files)} files, {human_size(size)})")
    f = result.fidelity
    console.print(f"fidelity passed: max |logit difference| {f['max_abs_diff']:.3g} (tolerance {f['tolerance']:g}), "
                  f"top-1 agreement {f['top1_agreement']:.1%} on {f['positions'] - f['near_ties']} positions "
                  f"({f['near_ties']} near ties not counted); probes: {f['probe_source']}")
    if result.hub_url:
        console.print(f"uploaded to {result.hub_url}")
    console.print(f"recorded as export {result.export_id} (`reg show {result.sources[0]['ref']}` lists it)")
