"""Job cost and rent-vs-own (`reg plan --break-even`): table prices, the documented example pinned, bad input.

Pure arithmetic, no torch and no model.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import typer
from conftest import run_reg

from trainer.costs import EXAMPLE, break_even, gpu_price, job_cost, price_table, rent_or_own
from trainer.plan_inputs import PACKAGED_GPU_TABLE, GpuType, PlanError, load_gpu_table

TABLE = [GpuType("A100 80GB", 80.0, 1.79), GpuType("T4", 14.6, 0.35)]


def table_rows(out: str) -> list[list[str]]:
    """The cells of each row of a rich table as `reg` prints it (box lines dropped)."""
    return [[cell.strip() for cell in line.split("│")[1:-1]] for line in out.splitlines() if line.startswith("│")]


# --- job cost ---------------------------------------------------------------------------------------


def test_job_cost_prices_device_hours_from_the_table():
    cost = job_cost(6, "A100 80GB", TABLE, price_source="gpus.yaml")
    assert cost == {"device_hours": 6.0, "device": "A100 80GB", "usd_per_hour": 1.79, "usd": 10.74, "price_source": "gpus.yaml"}
    assert job_cost(0.5, " a100 80gb ", TABLE)["usd"] == 0.9  # case and outer spaces do not matter; rounded to cents
    assert job_cost(0, "T4", TABLE)["usd"] == 0.0


@pytest.mark.parametrize("device", ["cpu", "cuda", "A100", "NVIDIA A100-SXM4-40GB", "NVIDIA H100 PCIe", ""])
def test_job_cost_of_a_device_not_in_the_table_is_none_not_a_crash(device):
    cost = job_cost(3, device, TABLE)
    assert cost["usd_per_hour"] is None and cost["usd"] is None and cost["device_hours"] == 3.0


@pytest.mark.parametrize("driver, entry", [
    ("NVIDIA A100-SXM4-80GB", "A100 80GB"), ("NVIDIA A100-PCIE-40GB", "A100 40GB"), ("NVIDIA H100 80GB HBM3", "H100 80GB"),
    ("NVIDIA H200", "H200"), ("NVIDIA GeForce RTX 4090", "RTX 4090"), ("NVIDIA L4", "L4"), ("NVIDIA L40S", "L40S"),
    ("NVIDIA A10G", "A10G"), ("NVIDIA H100 PCIe", None), ("Tesla T4", None),
])
def test_the_name_a_gpu_driver_reports_finds_its_table_entry(driver, entry):
    """A worker prices its jobs by the name torch reports for its GPU; every word of the entry must be in it."""
    found = gpu_price(driver, load_gpu_table(PACKAGED_GPU_TABLE))
    assert (found.name if found else None) == entry


def test_job_cost_from_the_table_in_force_names_it(home):
    gpus, source = price_table(home=home)
    assert source == str(PACKAGED_GPU_TABLE) and gpus == load_gpu_table(PACKAGED_GPU_TABLE)
    assert job_cost(10, "H100 80GB", gpus, source) == {
        "device_hours": 10.0, "device": "H100 80GB", "usd_per_hour": 2.99, "usd": 29.9, "price_source": source,
    }
    assert gpu_price("rtx 4090", gpus).usd_per_hour == 0.69


@pytest.mark.parametrize("hours, device, named", [
    (-1, "T4", "device_hours -1: expected a number >= 0"),
    (float("nan"), "T4", "device_hours nan: expected a number >= 0"),
    (True, "T4", "device_hours True: expected a number"),
    ("3", "T4", "device_hours '3': expected a number"),
    (1e12, "T4", "device_hours 1000000000000.0: expected a number >= 0 and at most 10,000,000"),
    (1, None, "device None: expected a device name"),
])
def test_job_cost_refuses_bad_input_naming_it(hours, device, named):
    with pytest.raises(PlanError, match="^" + named.replace("(", r"\(").replace(")", r"\)")):
        job_cost(hours, device, TABLE)


# --- break-even arithmetic --------------------------------------------------------------------------


@pytest.mark.parametrize("rent, purchase, running, years, upkeep", [
    (0.69, 3500, 0.10, 3, 0), (1.79, 15000, 0.25, 3, 0), (23.92, 250_000, 2.0, 5, 150), (2.99, 30_000, 0.4, 2.5, 10),
])
def test_at_the_break_even_usage_owning_and_renting_cost_the_same(rent, purchase, running, years, upkeep):
    threshold = break_even(40, rent, purchase, running, years, upkeep)["break_even_hours_per_week"]
    at = break_even(min(threshold, 168), rent, purchase, running, years, upkeep)
    if threshold <= 168:
        assert at["rent_usd_per_week"] == pytest.approx(at["own_usd_per_week"], abs=0.02)
        # Payback at the break-even usage is the lifetime: the savings repay the purchase exactly once.
        assert at["payback_months"] == pytest.approx(12 * years, abs=0.1)
    below, above = (break_even(h, rent, purchase, running, years, upkeep) for h in (threshold * 0.9, min(threshold * 1.1, 168)))
    assert below["cheaper"] == "rent"
    assert above["cheaper"] == ("own" if threshold * 1.1 <= 168 else "rent")


def test_when_owning_never_wins_the_verdict_says_so():
    dear_to_run = break_even(40, 0.50, 10_000, 0.60)
    assert dear_to_run["break_even_hours_per_week"] is None and dear_to_run["payback_weeks"] is None
    assert dear_to_run["cheaper"] == "rent"
    assert dear_to_run["verdict"].startswith("renting is always cheaper: running the owned machine ($0.60/h)")
    past_a_week = break_even(40, 1.0, 100_000, 0.10, lifetime_years=2, upkeep_usd_per_week=20)
    assert past_a_week["break_even_hours_per_week"] == 1090.6
    assert past_a_week["verdict"] == "renting is always cheaper: owning would win only above 1090.6 h/week, and a week has 168"
    idle = break_even(0, 0.69, 3500, 0.10)
    assert idle["rent_usd_per_week"] == 0 and idle["payback_weeks"] is None and idle["cheaper"] == "rent"


# --- `reg plan --break-even`: the documented example, pinned ------------------------------------------


def test_reg_plan_break_even_alone_prints_the_documented_example(capsys, home, monkeypatch):
    """The example of trainer/costs.py and README: an RTX 4090 workstation, $3,500, $0.10/h, 3 years, 40 h/week.

    Owning beats renting near 40 hours a week of consistent use: above 38.0. Update README if these change.
    """
    monkeypatch.delenv("COLUMNS", raising=False)
    code, out, err = run_reg(capsys, "plan", "--break-even")
    assert code == 0 and err == ""
    assert out.splitlines()[0] == "Rent or own RTX 4090 at 40 h/week (the documented example)"
    assert table_rows(out) == [
        ["rent/week", "$27.60", f"40 h x $0.69/h (RTX 4090, {PACKAGED_GPU_TABLE})"],
        ["own/week", "$26.44", "$22.44 fixed ($3,500 over 3 years) + 40 h x $0.10/h running"],
        ["break-even", "38.0 h/week", "usage at which both cost the same"],
        ["payback", "148.3 weeks", "34.2 months"],
    ]
    assert out.splitlines()[-1] == "owning is cheaper above 38.0 h/week; at 40 h/week owning saves $1.16 a week"
    code, same, _ = run_reg(capsys, "plan", "--break-even", "--weekly-hours", "40", "--gpu", "RTX 4090",
                            "--purchase", "3500", "--running", "0.10", "--lifetime-years", "3")
    assert code == 0 and table_rows(same) == table_rows(out)


def test_reg_plan_break_even_json_is_the_same_figures(capsys, home):
    code, out, _ = run_reg(capsys, "plan", "--break-even", "--json")
    assert code == 0
    assert json.loads(out) == {
        "gpu": "RTX 4090", "rent_source": str(PACKAGED_GPU_TABLE), "example": True,
        "weekly_hours": 40.0, "rent_usd_per_hour": 0.69, "purchase_usd": 3500.0, "running_usd_per_hour": 0.1,
        "lifetime_years": 3.0, "upkeep_usd_per_week": 0.0,
        "rent_usd_per_week": 27.6, "own_usd_per_week": 26.44, "own_fixed_usd_per_week": 22.44,
        "break_even_hours_per_week": 38.03, "payback_weeks": 148.3, "payback_months": 34.2, "cheaper": "own",
        "verdict": "owning is cheaper above 38.0 h/week; at 40 h/week owning saves $1.16 a week",
    }
    assert EXAMPLE == {"gpu": "RTX 4090", "weekly_hours": 40.0, "purchase_usd": 3500.0, "running_usd_per_hour": 0.10}


def test_reg_plan_break_even_for_a_datacenter_card_rents_at_40_hours(capsys, home):
    """`reg plan --break-even --weekly-hours 40 --gpu "A100 80GB" --purchase 15000 --running 0.25` (README)."""
    code, out, _ = run_reg(capsys, "plan", "--break-even", "--weekly-hours", "40", "--gpu", "a100 80gb",
                           "--purchase", "15000", "--running", "0.25")
    assert code == 0
    assert table_rows(out)[1:] == [
        ["own/week", "$106.15", "$96.15 fixed ($15,000 over 3 years) + 40 h x $0.25/h running"],
        ["break-even", "62.4 h/week", "usage at which both cost the same"],
        ["payback", "243.5 weeks", "56.2 months, past the 3-year lifetime"],
    ]
    assert table_rows(out)[0][:2] == ["rent/week", "$71.60"]
    assert out.splitlines()[-1] == "owning is cheaper above 62.4 h/week; at 40 h/week renting saves $34.55 a week"


def test_reg_plan_break_even_takes_the_rent_from_the_table_in_force_or_from_rent(capsys, home, tmp_path):
    table = tmp_path / "gpus.yaml"
    table.write_text("gpus:\n  - {name: T4, memory_gb: 14.6, usd_per_hour: 0.35}\n")
    code, out, _ = run_reg(capsys, "plan", "--break-even", "--gpus", str(table), "--gpu", "T4", "--purchase", "1000",
                           "--running", "0.05", "--json")
    result = json.loads(out)
    assert code == 0 and result["rent_usd_per_hour"] == 0.35 and result["rent_source"] == str(table)
    assert result["rent_usd_per_week"] == 14.0 and result["example"] is False
    code, out, _ = run_reg(capsys, "plan", "--break-even", "--rent", "2", "--purchase", "20000", "--running", "0.3",
                           "--upkeep", "10", "--json")
    result = json.loads(out)
    assert code == 0 and result["rent_source"] == "--rent" and result["gpu"] is None
    assert result["own_usd_per_week"] == round(20000 / 156 + 10 + 40 * 0.3, 2)
    assert rent_or_own(load_gpu_table(PACKAGED_GPU_TABLE))["break_even_hours_per_week"] == 38.03


@pytest.mark.parametrize("args, named", [
    (["--weekly-hours", "200"], "--weekly-hours 200.0: expected a number >= 0 and at most 168"),
    (["--weekly-hours", "-1"], "--weekly-hours -1.0: expected a number >= 0 and at most 168"),
    (["--weekly-hours", "nan"], "--weekly-hours nan: expected a number >= 0 and at most 168"),
    (["--purchase", "0"], "--purchase 0.0: expected a number > 0 and at most 100,000,000"),
    (["--purchase", "1e12"], "--purchase 1000000000000.0: expected a number > 0 and at most 100,000,000"),
    (["--running", "inf"], "--running inf: expected a number >= 0 and at most 10,000"),
    (["--rent", "-1", "--purchase", "1000", "--running", "0.1"], "--rent -1.0: expected a number >= 0 and at most 10,000"),
    (["--lifetime-years", "0"], "--lifetime-years 0.0: expected a number > 0 and at most 20"),
    (["--upkeep", "-5"], "--upkeep -5.0: expected a number >= 0 and at most 10,000,000"),
    (["--gpu", "H100", "--purchase", "1", "--running", "0"], "--gpu 'H100': not in the GPU table "),
    (["--gpu", "H100 80GB"], "--purchase is needed with --gpu or --rent: the defaults are those of the RTX 4090 example"),
    (["--rent", "3", "--purchase", "1"], "--running is needed with --gpu or --rent"),
    (["--params", "8B"], "--break-even compares costs and takes no model: drop --params/--base"),
])
def test_reg_plan_break_even_refuses_bad_input_in_one_line(capsys, home, args, named):
    code, out, err = run_reg(capsys, "plan", "--break-even", *args)
    assert code == 2 and out == ""
    assert err.startswith(f"error: {named}") and err.count("\n") == 1 and "Traceback" not in err


def test_break_even_options_without_break_even_and_unparsable_numbers_are_refused(capsys, home):
    code, out, err = run_reg(capsys, "plan", "--params", "8B", "--weekly-hours", "40")
    assert (code, out) == (2, "")
    assert err == "error: --weekly-hours is a --break-even option: add --break-even (or drop --weekly-hours)\n"
    code, out, err = run_reg(capsys, "plan", "--break-even", "--purchase", "lots")
    assert code == 2 and out == "" and "'lots' is not a valid float" in err and "Traceback" not in err


def test_every_reg_plan_option_has_help_text():
    import cli.main  # noqa: F401  (registers the commands)
    from cli.common import app

    command = typer.main.get_command(app).commands["plan"]
    missing = [param.name for param in command.params if not getattr(param, "help", None)]
    assert missing == []
    names = {opt for param in command.params for opt in param.opts}
    new = {"--break-even", "--weekly-hours", "--gpu", "--rent", "--purchase", "--running", "--lifetime-years", "--upkeep"}
    assert new <= names


def test_importing_costs_does_not_import_torch_or_rich():
    code = "import sys, trainer.costs; sys.exit('torch' in sys.modules or 'rich' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_weeks_months_and_lifetime_agree():
    """A month is 52/12 weeks, the same year the purchase is spread over: payback past the lifetime means renting wins."""
    result = break_even(40, 1.79, 15000, 0.25)
    assert result["payback_months"] == round(result["payback_weeks"] * 12 / 52, 1)
    assert result["payback_months"] > 36 and result["cheaper"] == "rent"
    assert math.isclose(result["own_fixed_usd_per_week"], round(15000 / 156, 2))
