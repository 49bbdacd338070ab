"""`reg train`, `reg plan` and `reg eval`: fine-tune, size and evaluate adapters (logic in `trainer/`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import Home, Json, _local_registry, _registry, app
from .output import console, print_json


@app.command()
def train(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG", help="Training config (YAML, Axolotl-style keys).")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a config key: key=value (dotted for sections, e.g. push.alias=staging).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the newest unfinished run of this config from its last checkpoint.")] = False,
    run_id: Annotated[Optional[str], typer.Option(help="With --resume: the run to continue.")] = None,
    skip_bad_lines: Annotated[bool, typer.Option(help="Skip invalid dataset lines (and report how many) instead of stopping.")] = False,
    no_push: Annotated[bool, typer.Option("--no-push", help="Train and evaluate, but do not push a version.")] = False,
    home: Home = None,
) -> None:
    """Fine-tune an adapter from a YAML config, evaluate it against its base, and push it with its lineage."""
    from trainer.config import load_config
    from trainer.train import train as run_training

    config = load_config(config_path, set_ or [])
    result = run_training(config, _local_registry(home, "reg train"), resume=resume, run_id=run_id, skip_bad_lines=skip_bad_lines,
                          push=not no_push, config_path=config_path)
    if result.evaluation is None:  # a non-main process under accelerate launch
        return
    from .render import render_evaluation

    render_evaluation(console, result.evaluation)
    console.print(f"run {result.run_id}: {result.duration_s:.0f} s, {result.seconds_per_step:.2f} s/step, "
                  f"peak memory {result.peak_memory_mb:.0f} MB; loss curves in {result.run_dir / 'loss.png'}")
    if result.version_ref:
        console.print(result.version_ref)


@app.command()
def plan(
    params: Annotated[Optional[str], typer.Option(help="Model size, e.g. 8B, 70b, 135M (or use --base).")] = None,
    base: Annotated[Optional[str], typer.Option(help="A registered base: its config.json gives the exact shape.")] = None,
    method: Annotated[str, typer.Option(help="full, lora, qlora, or all (side by side).")] = "all",
    rank: Annotated[int, typer.Option(help="LoRA rank (all linear layers).")] = 16,
    seq: Annotated[int, typer.Option(help="Sequence length in tokens.")] = 2048,
    batch: Annotated[int, typer.Option(help="Micro-batch size per GPU.")] = 1,
    gradient_checkpointing: Annotated[bool, typer.Option(help="Recompute activations in the backward pass.")] = True,
    gpus: Annotated[Optional[Path], typer.Option(help="GPU price table (YAML); default $LORADOCK_HOME/gpus.yaml if present, else the shipped one.")] = None,
    break_even: Annotated[bool, typer.Option(
        "--break-even",
        help="Instead of memory: when owning a machine beats renting one (needs no model; alone: the RTX 4090 example).",
    )] = False,
    weekly_hours: Annotated[Optional[float], typer.Option(
        help="With --break-even: hours of use a week, 0 to 168 (default 40).", show_default=False)] = None,
    gpu: Annotated[Optional[str], typer.Option(
        help="With --break-even: the GPU rented, by its name in the price table, whose price is the rent (default RTX 4090).",
        show_default=False)] = None,
    rent: Annotated[Optional[float], typer.Option(
        help="With --break-even: the rent in USD per hour, instead of the table's price for --gpu.", show_default=False)] = None,
    purchase: Annotated[Optional[float], typer.Option(
        help="With --break-even: the owned machine's purchase price in USD (example: 3500; needed with --gpu or --rent).",
        show_default=False)] = None,
    running: Annotated[Optional[float], typer.Option(
        help="With --break-even: the owned machine's running cost (power, hosting) in USD per hour of use "
             "(example: 0.10; needed with --gpu or --rent).", show_default=False)] = None,
    lifetime_years: Annotated[Optional[float], typer.Option(
        help="With --break-even: years the purchase price is spread over, no resale value (default 3).",
        show_default=False)] = None,
    upkeep: Annotated[Optional[float], typer.Option(
        help="With --break-even: the owned machine's fixed upkeep in USD per week, used or not (default 0).",
        show_default=False)] = None,
    json_out: Json = False,
    home: Home = None,
) -> None:
    """Estimate fine-tuning memory (weights, adapter, gradients, optimizer, activations), recommend GPUs, price them.

    With --break-even, instead: renting vs owning a machine per week, the break-even usage and the payback.
    """
    from trainer.plan import METHODS, plan as make_plan
    from trainer.plan_inputs import PlanError, load_gpu_table, shape_from_config

    cost_flags = {"--weekly-hours": weekly_hours, "--gpu": gpu, "--rent": rent, "--purchase": purchase, "--running": running,
                  "--lifetime-years": lifetime_years, "--upkeep": upkeep}
    if break_even:
        if params is not None or base is not None:
            raise PlanError("--break-even compares costs and takes no model: drop --params/--base (or run `reg plan` twice)")
        from trainer.costs import price_table, rent_or_own

        table, source = price_table(gpus, home=home)
        result = rent_or_own(table, gpu=gpu, weekly_hours=weekly_hours, purchase_usd=purchase, running_usd_per_hour=running,
                             rent_usd_per_hour=rent, lifetime_years=lifetime_years, upkeep_usd_per_week=upkeep,
                             price_source=source)
        if json_out:
            print_json(result)
            return
        from .plan_view import render_break_even

        render_break_even(console, result)
        return
    stray = next((flag for flag, value in cost_flags.items() if value is not None), None)
    if stray:
        raise PlanError(f"{stray} is a --break-even option: add --break-even (or drop {stray})")
    if (params is None) == (base is None):
        raise PlanError("give exactly one of --params (e.g. 8B) or --base NAME")
    if method != "all" and method not in METHODS:
        raise PlanError(f"--method {method!r}: use one of {', '.join(METHODS)} or all")
    model = shape_from_config(_registry(home).get_base(base).config, name=base) if base else params
    result = make_plan(model, rank=rank, seq=seq, batch=batch, methods=METHODS if method == "all" else (method,),
                       gpus=load_gpu_table(gpus, home=home), gradient_checkpointing=gradient_checkpointing)
    if json_out:
        print_json(result)
        return
    from .plan_view import render_plan

    render_plan(console, result)


@app.command("eval")
def eval_(
    ref: Annotated[str, typer.Argument(help="Version to evaluate: NAME, NAME:N or NAME@ALIAS.")],
    data: Annotated[Path, typer.Option(help="JSONL file of examples to evaluate on.")],
    data_type: Annotated[str, typer.Option("--type", help="Format of --data: alpaca, sharegpt, chat or completion.")] = "alpaca",
    task_metric: Annotated[str, typer.Option(help="Headline metric: exact_match, rouge_l or bleu.")] = "exact_match",
    max_examples: Annotated[int, typer.Option(help="Examples to generate answers for.")] = 64,
    quant: Annotated[str, typer.Option(help="Load the base as none, nf4 or int8.")] = "none",
    no_record: Annotated[bool, typer.Option("--no-record", help="Print only; do not record the evaluation.")] = False,
    json_out: Json = False,
    home: Home = None,
) -> None:
    """Evaluate a registered version (and its base) on a data file; records the result with the version."""
    from trainer.evaluate import evaluate_version

    result = evaluate_version(_local_registry(home, "reg eval"), ref, data, data_type, task_metric=task_metric, max_examples=max_examples,
                              quantization=quant, record=not no_record, progress=True)
    if json_out:
        print_json(result)
        return
    from .render import render_evaluation

    render_evaluation(console, result)
