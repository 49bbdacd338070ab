"""How `reg plan` shows a plan: memory by component per method, and each GPU type's recommendation.

The numbers come from trainer/plan.py (`plan(...)` returns a JSON-ready dict, which `--json` prints raw);
this module only lays them out as rich tables.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from trainer.plan_inputs import gib, human_count


def render_plan(console: Console, result: dict) -> None:
    """The side-by-side table, then one GPU table and the notes per method."""
    console.print(format_plan_table(result))
    for method, numbers in result["methods"].items():
        console.print(format_gpu_table(result, method))
        for note in numbers.get("notes", []):
            console.print(f"  note: {note}")


def format_plan_table(result: dict):
    """A rich Table: memory by component for each method, and the cheapest GPU option for each."""
    model, settings = result["model"], result["settings"]
    title = (f"{model['name'] or 'model'}: {human_count(model['params'])} params, rank {settings['rank']}, "
             f"seq {settings['seq']} x batch {settings['batch']}")
    methods = list(result["methods"])
    table = Table(title=title, title_justify="left")
    table.add_column("")
    for method in methods:
        table.add_column(method.upper(), justify="right")
    for key in ("weights", "adapter", "gradients", "optimizer", "activations", "overhead", "total"):
        cells = [gib(result["methods"][m]["memory"][key]) if result["methods"][m]["memory"][key] else "-" for m in methods]
        if key == "total":
            key, cells = f"[bold]{key}[/bold]", [f"[bold]{c}[/bold]" for c in cells]
        table.add_row(key, *cells)
    table.add_row("trainable", *[human_count(result["methods"][m]["trainable_params"]) for m in methods])
    table.add_row("one GPU", *[_first_single(result["methods"][m]["recommendations"]) for m in methods])
    table.add_row("cheapest", *[_cheapest(result["methods"][m]["recommendations"]) for m in methods])
    return table


def format_gpu_table(result: dict, method: str):
    """A rich Table of every GPU type's recommendation for one method, cheapest first."""
    table = Table(title=f"{method.upper()} on each GPU type", title_justify="left")
    for name, justify in (("GPU", "left"), ("MEMORY", "right"), ("GPUS", "right"), ("PER GPU", "right"),
                          ("USE", "right"), ("USD/HOUR", "right"), ("NOTE", "left")):
        table.add_column(name, justify=justify)
    for r in result["methods"][method]["recommendations"]:
        use = "-" if r["utilisation"] is None else f"{100 * r['utilisation']:.0f}%" + (" tight" if r["tight"] else "")
        table.add_row(
            r["gpu"], f"{r['memory_gb']:g} GiB", "-" if r["gpus_needed"] is None else str(r["gpus_needed"]),
            "-" if r["per_gpu_bytes"] is None else gib(r["per_gpu_bytes"]), use,
            "-" if r["usd_per_hour"] is None else f"${r['usd_per_hour']:.2f}", r["note"],
        )
    return table


def _first_single(recs: list[dict]) -> str:
    r = next((r for r in recs if r["fits_one"]), None)
    return "none" if r is None else f"{r['gpu']}{' (tight)' if r['tight'] else ''}"


def _cheapest(recs: list[dict]) -> str:
    r = next((r for r in recs if r["usd_per_hour"] is not None), None)
    return "none" if r is None else f"{r['gpus_needed']}x {r['gpu']} ${r['usd_per_hour']:.2f}/h"
