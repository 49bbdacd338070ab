"""`python -m load_tests`: the load generator (`run`), its setup helper (`prepare`) and the benchmarks.

    python -m load_tests run --target localhost:50051 --adapters arith,shout --concurrency 32 --duration 60
    python -m load_tests run --preset overload --target localhost:50051 --duration 30
    python -m load_tests run --protocol http --target localhost:8000 --adapters arith,shout --concurrency 16
    python -m load_tests prepare --home ~/.loradock --count 16

Exit codes follow `reg`'s (README "Exit codes"): 2 bad input, 3 adapter not found on the server,
9 server unreachable, 1 anything else (and an overload/canary run whose server lost requests or died).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from cli import logs
from registry.bases import DEFAULT_BASE
from registry.errors import LoradockError
from registry.fields import help_texts

from . import use_offline_hub
from .run import LoadOptions

app = typer.Typer(
    name="load_tests",
    help="Load tests and benchmarks for a loradock server.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
HELP = help_texts(LoadOptions)
UNREACHABLE_EXIT = 9
PRESET_SET = ("concurrency", "mix")  # options some presets set (see load_tests/presets.py)


def _opt(name: str, *flags: str):
    """An option whose default comes from LoadOptions (or the preset), so typer's own default is None."""
    default = LoadOptions.__dataclass_fields__[name].default
    preset = " unless the preset sets it" if name in PRESET_SET else ""
    shown = "" if default is None or default is False or default == "" else f" (default {default}{preset})"
    return typer.Option(*flags, help=HELP[name] + shown, show_default=False)


@app.command()
def run(
    target: Annotated[str, typer.Option("--target", "-t", envvar="LORADOCK_TARGET", help=HELP["target"])] = "localhost:50051",
    preset: Annotated[Optional[str], typer.Option(help="A named scenario: steady, many-adapters, overload, canary.")] = None,
    protocol: Annotated[Optional[str], _opt("protocol", "--protocol")] = None,
    adapters: Annotated[Optional[str], _opt("adapters", "--adapters", "-a")] = None,
    concurrency: Annotated[Optional[int], _opt("concurrency", "--concurrency", "-c")] = None,
    duration: Annotated[Optional[float], _opt("duration", "--duration", "-d")] = None,
    rate: Annotated[Optional[float], _opt("rate", "--rate")] = None,
    stream: Annotated[Optional[bool], _opt("stream", "--stream/--no-stream")] = None,
    keys: Annotated[Optional[int], _opt("keys", "--keys")] = None,
    max_new_tokens: Annotated[Optional[int], _opt("max_new_tokens", "--max-new-tokens")] = None,
    mix: Annotated[Optional[str], _opt("mix", "--mix")] = None,
    max_in_flight: Annotated[Optional[int], _opt("max_in_flight", "--max-in-flight")] = None,
    timeout: Annotated[Optional[float], _opt("timeout", "--timeout")] = None,
    seed: Annotated[Optional[int], _opt("seed", "--seed")] = None,
    prompts: Annotated[Optional[Path], _opt("prompts", "--prompts")] = None,
    out: Annotated[Optional[Path], _opt("out", "--out", "-o")] = None,
    home: Annotated[Optional[Path], typer.Option("--home", envvar="LORADOCK_HOME", help=HELP["home"])] = None,
    cache_size: Annotated[Optional[int], _opt("cache_size", "--cache-size")] = None,
    capacity: Annotated[Optional[float], _opt("capacity", "--capacity")] = None,
    calibrate: Annotated[Optional[float], _opt("calibrate", "--calibrate")] = None,
    overload_factor: Annotated[Optional[float], _opt("overload_factor", "--overload-factor")] = None,
    canary_steps: Annotated[Optional[str], _opt("canary_steps", "--canary-steps")] = None,
    progress: Annotated[bool, typer.Option(help="Show the live progress line.")] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON instead of a table.")] = False,
) -> None:
    """Drive a running server with a closed-loop (--concurrency) or open-loop (--rate) load; report and plot it."""
    given = {k: v for k, v in locals().items() if k not in ("preset", "progress", "json_out")}
    from rich.console import Console

    from . import report as report_mod
    from .presets import build_options
    from .driver import run_load

    options = build_options(preset, given)
    console = Console(stderr=True, highlight=False)
    result = run_load(options, preset, console=console, live=progress)
    if json_out:
        import json

        sys.stdout.write(json.dumps(result) + "\n")
    else:
        report_mod.render(result, Console(highlight=False))
    checks = result["checks"]
    if preset in ("overload", "canary") and (checks["lost"] or not checks["server_alive_after"]):
        raise typer.Exit(1)


@app.command()
def prepare(
    home: Annotated[Optional[Path], typer.Option(
        "--home", envvar="LORADOCK_HOME",
        help="Registry home the server serves from (default: $LORADOCK_HOME, else ~/.loradock).",
    )] = None,
    count: Annotated[int, typer.Option(help="How many adapters to make: PREFIX-00, PREFIX-01, ...")] = 16,
    base: Annotated[str, typer.Option(help="The base the server serves (registered name, directory or hub id).")] = DEFAULT_BASE,
    prefix: Annotated[str, typer.Option(help="Name prefix.")] = "load",
    rank: Annotated[int, typer.Option(help="LoRA rank (q_proj and v_proj).")] = 8,
    seed: Annotated[int, typer.Option(help="First seed; adapter i uses seed + i.")] = 0,
    canary: Annotated[bool, typer.Option(help="Also make `canary` with two versions (for --preset canary).")] = True,
) -> None:
    """Make small random-init LoRA adapters on the served base and push them to the registry (idempotent)."""
    from registry import Registry

    from .prepare import prepare_adapters

    registry = Registry(home)
    try:
        made = prepare_adapters(registry, base, count, prefix=prefix, rank=rank, seed=seed, canary=canary)
    finally:
        registry.close()
    print(" ".join(p.ref for p in made))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False)
def bench(ctx: typer.Context) -> None:
    """Side by side: our multi-LoRA batch vs the bare base vs PEFT over batch x adapters, loads, roofline (`bench --help`)."""
    from .bench import main as bench_main

    raise typer.Exit(bench_main(ctx.args))  # its options are bench.py's own (argparse), passed through as given


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False)
def peer(ctx: typer.Context) -> None:
    """vLLM side by side with `reg serve`: same base, adapters, prompts and clients, runs alternated (`peer --help`)."""
    from .peer import main as peer_main

    raise typer.Exit(peer_main(ctx.args))  # its options are peer.py's own (argparse), passed through as given


def main(argv: list[str] | None = None) -> int:
    """Run with `argv`; return the exit code. Loradock errors become one-line messages here."""
    from cli.errors import report

    from .run import Unreachable

    use_offline_hub()  # before any command imports transformers or huggingface_hub
    logs.configure()  # progress lines (load_tests.prepare ...) on stderr, as `reg` shows them

    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="python -m load_tests", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Unreachable as exc:
        report(exc)
        return UNREACHABLE_EXIT
    except LoradockError as exc:
        return report(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
