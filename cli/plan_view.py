"""How `reg plan` shows a plan: memory by component per method, each GPU type's recommendation, and rent or own.

The numbers come from trainer/plan.py (`plan(...)` returns a JSON-ready dict, which `--json` prints raw)
and, for `reg plan --break-even`, from trainer/costs.py (`rent_or_own`); this module only lays them out
as rich tables.
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


def render_break_even(console: Console, result: dict) -> None:
    """`reg plan --break-even`: the rent-or-own table, then its verdict."""
    console.print(format_break_even_table(result))
    console.print(result["verdict"])


def format_break_even_table(result: dict):
    """A rich Table of renting vs owning per week, where they break even, and the payback at this usage."""
    r = result
    hours, years = f"{r['weekly_hours']:g} h", f"{r['lifetime_years']:g}"
    title = f"Rent or own {r['gpu'] or 'a machine'} at {hours}/week{' (the documented example)' if r['example'] else ''}"
    table = Table(title=title, title_justify="left", show_header=False)
    for justify in ("left", "right", "left"):
        table.add_column(justify=justify)
    source = "--rent" if r["rent_source"] == "--rent" else f"{r['gpu']}, {r['rent_source'] or 'GPU table'}"
    table.add_row("rent/week", f"${r['rent_usd_per_week']:,.2f}", f"{hours} x ${r['rent_usd_per_hour']:.2f}/h ({source})")
    upkeep = f" + ${r['upkeep_usd_per_week']:,.2f} upkeep" if r["upkeep_usd_per_week"] else ""
    table.add_row("own/week", f"${r['own_usd_per_week']:,.2f}",
                  f"${r['own_fixed_usd_per_week']:,.2f} fixed (${r['purchase_usd']:,.0f} over {years} years{upkeep}) "
                  f"+ {hours} x ${r['running_usd_per_hour']:.2f}/h running")
    threshold = r["break_even_hours_per_week"]
    table.add_row("break-even", "-" if threshold is None else f"{threshold:.1f} h/week", "usage at which both cost the same")
    weeks = r["payback_weeks"]
    late = weeks is not None and r["payback_months"] > 12 * r["lifetime_years"]
    table.add_row("payback", "never" if weeks is None else f"{weeks:.1f} weeks",
                  "owning saves nothing at this usage" if weeks is None else
                  f"{r['payback_months']:.1f} months{', past the ' + years + '-year lifetime' if late else ''}")
    return table
