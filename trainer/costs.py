"""What GPU time costs: a job's price from the GPU table, and when owning a machine beats renting one.

`job_cost(2.5, "A100 80GB", gpus)` prices a job's device-hours from the same table `reg plan` uses
(trainer/gpus.yaml or the user's copy, see `trainer.plan_inputs.gpu_table_path`), so teams can charge
GPU time back to each other. `break_even(...)` compares renting with owning per week; `rent_or_own`
is what `reg plan --break-even` calls (it takes the rent from the table). No torch and no rendering here;
cli/plan_view.py lays the numbers out.

The ownership model (one, kept simple so its figures can be checked by hand):
  * renting a week costs `weekly_hours x rent_usd_per_hour`;
  * owning a week costs the purchase price spread evenly over the machine's life (`purchase_usd /
    (lifetime_years x 52)`, no resale value, no interest), plus its running cost (power, cooling,
    hosting) for each hour it is used, plus an optional fixed upkeep per week (rack space, support);
  * so owning wins above `(purchase / (52 x lifetime) + upkeep) / (rent - running)` hours a week, and
    at a given usage the purchase pays for itself after `purchase / (weekly savings)` weeks, where a
    week's saving is `weekly_hours x (rent - running) - upkeep`. A month is 52/12 weeks.

The documented example (`reg plan --break-even` with no other options): an RTX 4090 workstation bought
for $3,500 (card ~$2,000 plus the machine around it), running at $0.10 an hour (about 0.6 kW at
$0.17/kWh), kept 3 years, against renting an RTX 4090 at the shipped table's $0.69/h. Owning is cheaper
above 38.0 h/week; at 40 h/week renting costs $27.60 a week and owning $26.44, and the machine pays for
itself in 148.3 weeks (34.2 months, inside its 36). That is the rule of thumb "owning beats renting near
40 hours a week of consistent use". A datacenter card against cloud list prices breaks even much later:
an A100 80GB bought for $15,000 and run at $0.25/h against $1.79/h breaks even at 62.4 h/week.
"""

from __future__ import annotations

import math
import re

from registry.errors import shown

from .plan_inputs import USD_PER_HOUR_MAX, GpuType, PlanError, gpu_table_path, load_gpu_table

WEEKS_PER_YEAR = 52
HOURS_PER_WEEK = 168
PURCHASE_USD_MAX = 100_000_000  # a whole cluster; past this the arithmetic means nothing
UPKEEP_USD_PER_WEEK_MAX = 10_000_000
LIFETIME_YEARS_MAX = 20
DEVICE_HOURS_MAX = 10_000_000  # about 1,100 device-years

# `reg plan --break-even` with no options: the example in this module's docstring and README.
EXAMPLE = {"gpu": "RTX 4090", "weekly_hours": 40.0, "purchase_usd": 3500.0, "running_usd_per_hour": 0.10}
DEFAULT_LIFETIME_YEARS = 3.0


# --- the price table --------------------------------------------------------------------------------


def gpu_price(device: str, gpus: list[GpuType]) -> GpuType | None:
    """The table entry for `device`, or None (e.g. 'cpu', an unlisted GPU).

    An exact name (case-insensitive, outer spaces ignored) wins; else the entry whose every word is a word of the
    name the driver reports ('NVIDIA A100-SXM4-80GB' is 'A100 80GB', 'NVIDIA GeForce RTX 4090' is 'RTX 4090'),
    the one with the most words if several are."""
    wanted = device.strip().casefold()
    exact = next((gpu for gpu in gpus if gpu.name.strip().casefold() == wanted), None)
    if exact is not None:
        return exact
    words = _words(device)
    matches = [gpu for gpu in gpus if _words(gpu.name) and _words(gpu.name) <= words]
    return max(matches, key=lambda gpu: len(_words(gpu.name)), default=None)


def _words(name: str) -> set[str]:
    return set(re.split(r"[\s_-]+", name.strip().casefold())) - {""}


def price_table(path=None, home=None) -> tuple[list[GpuType], str]:
    """The GPU table in force (see `gpu_table_path`) and where it came from, for `price_source`."""
    return load_gpu_table(path, home=home), str(gpu_table_path(path, home))


def job_cost(device_hours: float, device: str, gpus: list[GpuType], price_source: str | None = None) -> dict:
    """What a job's device-hours cost at the table's price for its device: a JSON-ready dict.

    `device_hours` counts every device (2 GPUs for 3 hours are 6); `usd_per_hour` is one device's
    price, None when the device is not in the table (a CPU job, an unlisted GPU), and then `usd` is
    None too. `price_source` names the table (`price_table` returns it beside the table).
    """
    hours = _number("device_hours", device_hours, 0, DEVICE_HOURS_MAX)
    if not isinstance(device, str):
        raise PlanError(f"device {shown(device)}: expected a device name such as 'A100 80GB' or 'cpu'")
    entry = gpu_price(device, gpus)
    price = None if entry is None else entry.usd_per_hour
    return {
        "device_hours": hours, "device": device, "usd_per_hour": price,
        "usd": None if price is None else round(hours * price, 2), "price_source": price_source,
    }


# --- rent or own ------------------------------------------------------------------------------------


def break_even(
    weekly_hours: float, rent_usd_per_hour: float, purchase_usd: float, running_usd_per_hour: float,
    lifetime_years: float = DEFAULT_LIFETIME_YEARS, upkeep_usd_per_week: float = 0.0,
) -> dict:
    """Renting vs owning per week at `weekly_hours` of use, the usage where they cost the same, and the payback.

    The model is the module docstring's. Returns a JSON-ready dict: the inputs, `rent_usd_per_week`,
    `own_usd_per_week` (and its fixed part), `break_even_hours_per_week` (None when owning never wins:
    running costs at least the rent), `payback_weeks`/`payback_months` at this usage (None when owning
    saves nothing a week), `cheaper` ('own', 'rent' or 'same') and a one-line `verdict`.
    Every input is checked; PlanError names the `reg plan` flag and the value.
    """
    hours = _number("--weekly-hours", weekly_hours, 0, HOURS_PER_WEEK)
    rent = _number("--rent", rent_usd_per_hour, 0, USD_PER_HOUR_MAX)
    purchase = _number("--purchase", purchase_usd, 0, PURCHASE_USD_MAX, above_low=True)
    running = _number("--running", running_usd_per_hour, 0, USD_PER_HOUR_MAX)
    lifetime = _number("--lifetime-years", lifetime_years, 0, LIFETIME_YEARS_MAX, above_low=True)
    upkeep = _number("--upkeep", upkeep_usd_per_week, 0, UPKEEP_USD_PER_WEEK_MAX)

    fixed = purchase / (lifetime * WEEKS_PER_YEAR) + upkeep
    rent_week, own_week = hours * rent, fixed + hours * running
    margin = rent - running  # what each hour of use saves an owner, before the fixed costs
    threshold = fixed / margin if margin > 0 else None
    saving = hours * margin - upkeep
    payback = purchase / saving if saving > 0 else None
    cheaper = "same" if round(rent_week, 2) == round(own_week, 2) else ("own" if own_week < rent_week else "rent")
    result = {
        "weekly_hours": hours, "rent_usd_per_hour": rent, "purchase_usd": purchase, "running_usd_per_hour": running,
        "lifetime_years": lifetime, "upkeep_usd_per_week": upkeep,
        "rent_usd_per_week": round(rent_week, 2), "own_usd_per_week": round(own_week, 2),
        "own_fixed_usd_per_week": round(fixed, 2),
        "break_even_hours_per_week": None if threshold is None else round(threshold, 2),
        "payback_weeks": None if payback is None else round(payback, 1),
        "payback_months": None if payback is None else round(payback * 12 / WEEKS_PER_YEAR, 1),
        "cheaper": cheaper,
    }
    result["verdict"] = _verdict(result, threshold)
    return result


def rent_or_own(
    gpus: list[GpuType], gpu: str | None = None, weekly_hours: float | None = None, purchase_usd: float | None = None,
    running_usd_per_hour: float | None = None, rent_usd_per_hour: float | None = None, lifetime_years: float | None = None,
    upkeep_usd_per_week: float | None = None, price_source: str | None = None,
) -> dict:
    """`reg plan --break-even`: `break_even` with the rent taken from the table's price for `gpu`, plus where it came from.

    With neither `gpu` nor `rent_usd_per_hour`, the machine is the documented example's (EXAMPLE), and so
    are a missing purchase price and running cost; for any other machine both must be given. A missing
    usage, lifetime or upkeep takes `break_even`'s default (40 h/week, 3 years, none). `example` in the
    result says whether every figure is the documented example's.
    """
    example_machine = gpu is None and rent_usd_per_hour is None
    example = example_machine and all(value is None for value in (
        weekly_hours, purchase_usd, running_usd_per_hour, lifetime_years, upkeep_usd_per_week))
    if example_machine:
        gpu = EXAMPLE["gpu"]
        purchase_usd = EXAMPLE["purchase_usd"] if purchase_usd is None else purchase_usd
        running_usd_per_hour = EXAMPLE["running_usd_per_hour"] if running_usd_per_hour is None else running_usd_per_hour
    for flag, value in (("--purchase", purchase_usd), ("--running", running_usd_per_hour)):
        if value is None:
            raise PlanError(f"{flag} is needed with --gpu or --rent: the defaults are those of the {EXAMPLE['gpu']} example")
    rent_source = "--rent"
    if rent_usd_per_hour is None:
        entry = gpu_price(gpu, gpus)
        if entry is None:
            table = f"GPU table {price_source}" if price_source else "GPU table"
            raise PlanError(f"--gpu {shown(gpu)}: not in the {table} (known: {', '.join(g.name for g in gpus)}); "
                            f"or give its price with --rent")
        rent_usd_per_hour, rent_source = entry.usd_per_hour, price_source
    result = break_even(
        EXAMPLE["weekly_hours"] if weekly_hours is None else weekly_hours, rent_usd_per_hour, purchase_usd, running_usd_per_hour,
        DEFAULT_LIFETIME_YEARS if lifetime_years is None else lifetime_years,
        0.0 if upkeep_usd_per_week is None else upkeep_usd_per_week,
    )
    return {"gpu": gpu, "rent_source": rent_source, "example": example, **result}


def _verdict(result: dict, threshold: float | None) -> str:
    """One line: above what weekly usage owning wins, and what happens at the usage asked about."""
    rent, running = result["rent_usd_per_hour"], result["running_usd_per_hour"]
    if threshold is None:
        return (f"renting is always cheaper: running the owned machine (${running:.2f}/h) costs no less than renting "
                f"(${rent:.2f}/h)")
    if threshold > HOURS_PER_WEEK:
        return f"renting is always cheaper: owning would win only above {threshold:.1f} h/week, and a week has {HOURS_PER_WEEK}"
    line = f"owning is cheaper above {threshold:.1f} h/week"
    hours, difference = result["weekly_hours"], abs(result["rent_usd_per_week"] - result["own_usd_per_week"])
    if result["cheaper"] == "own":
        return f"{line}; at {hours:g} h/week owning saves ${difference:,.2f} a week"
    if result["cheaper"] == "rent":
        return f"{line}; at {hours:g} h/week renting saves ${difference:,.2f} a week"
    return f"{line}; at {hours:g} h/week they cost the same"


def _number(flag: str, value, low: float, high: float, above_low: bool = False) -> float:
    """`value` as a float within [low, high] (or (low, high] with `above_low`); PlanError names the flag and value."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (value > low if above_low else value >= low) or value > high:
        bound = f"> {low:g}" if above_low else f">= {low:g}"
        raise PlanError(f"{flag} {shown(value)}: expected a number {bound} and at most {high:,}")
    return float(value)
