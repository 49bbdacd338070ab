"""Named load scenarios (`--preset`): which adapters they mix, their default settings, and the phases they run.

steady         32 clients, 8 adapters, closed loop.
many-adapters  twice as many adapters in round-robin rotation as the server's cache holds: eviction and cold loads.
overload       measure capacity (or take --capacity), then Poisson arrivals at 4x it: rejections must be
               RESOURCE_EXHAUSTED (HTTP 429) and quick, admitted requests must all complete, the server must stay
               up. Capacity is measured with the server's max batch size of clients (over HTTP, which does not
               report it: --concurrency).
canary         a sticky 95/5 rollout between an adapter's two newest versions, raised live (5 -> 25 -> 50 %)
               through `reg rollout`, undone (`reg rollout clear`) at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

from registry.errors import InvalidInput, LoradockError, NotFound
from registry.names import parse_ref

from .run import OK, LoadGenerator, LoadOptions, ServerInfo
from .workload import AdapterChoice, parse_adapters

REPO = Path(__file__).resolve().parents[1]
OVERLOAD_MAX_IN_FLIGHT = 2048  # the generator's own ceiling, whatever the server's queue


class RolloutUnavailable(LoradockError):
    """`reg rollout` is missing or failed."""


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    choose_adapters: Callable[[LoadOptions, ServerInfo], list[AdapterChoice]]
    drive: Callable[[LoadGenerator, LoadOptions, ServerInfo, dict], None]
    defaults: dict = field(default_factory=dict)  # LoadOptions fields it sets; flags given on the command line win


def build_options(preset_name: str | None, given: dict) -> LoadOptions:
    """LoadOptions from the preset's defaults overlaid with the flags the user gave (those not None)."""
    values = dict(get_preset(preset_name).defaults) if preset_name else {}
    values.update({k: v for k, v in given.items() if v is not None})
    known = {f.name for f in fields(LoadOptions)}
    return LoadOptions(**{k: v for k, v in values.items() if k in known})


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise InvalidInput(f"--preset {name!r}: no such preset; use one of {', '.join(PRESETS)}")
    return PRESETS[name]


# --- adapters -------------------------------------------------------------------------------


def _take(options: LoadOptions, server: ServerInfo, count: int, preset: str) -> list[AdapterChoice]:
    """--adapters if given, else the first `count` adapters the server lists."""
    if options.adapters:
        return parse_adapters(options.adapters)
    if len(server.adapters) < count:
        raise NotFound(f"--preset {preset} mixes {count} adapters but {options.target} serves {len(server.adapters)} "
                       f"({', '.join(server.adapters) or 'none'}); push more (`python -m load_tests prepare --count {count}`) "
                       "or name them with --adapters")
    return [AdapterChoice(name, 1.0) for name in server.adapters[:count]]


def _cache_size(options: LoadOptions, server: ServerInfo) -> int:
    size = options.cache_size or (server.stats.cache.max_adapters if server.stats is not None else 0)
    if not size:
        where = "ServerStats does not report" if server.stats is not None else "HTTP API does not report"
        raise InvalidInput(f"--cache-size: the server's {where} its adapter cache size; give it")
    return size


def _many_adapters(options: LoadOptions, server: ServerInfo) -> list[AdapterChoice]:
    cache = _cache_size(options, server)
    if options.adapters:
        choices = parse_adapters(options.adapters)
        if len({parse_ref(c.ref).name for c in choices}) <= cache:
            raise InvalidInput(f"--adapters: many-adapters needs more adapters than the cache holds ({cache}); "
                               f"got {len(choices)}")
        return choices
    return _take(options, server, max(2 * cache, cache + 2), "many-adapters")


def _canary_adapter(options: LoadOptions, server: ServerInfo) -> list[AdapterChoice]:
    choices = parse_adapters(options.adapters or "canary")
    if len(choices) != 1 or str(parse_ref(choices[0].ref)) != parse_ref(choices[0].ref).name:
        raise InvalidInput(f"--adapters {options.adapters!r}: canary takes one bare adapter NAME (its rollout splits "
                           "the two newest versions)")
    return choices


# --- phases ---------------------------------------------------------------------------------


def single_phase(gen: LoadGenerator, options: LoadOptions, server: ServerInfo, notes: dict) -> None:
    if options.rate is not None:
        gen.open_loop("open", options.rate, options.duration, options.max_in_flight)
    else:
        gen.closed_loop("closed", options.concurrency, options.duration)


def _many_adapters_phase(gen: LoadGenerator, options: LoadOptions, server: ServerInfo, notes: dict) -> None:
    notes["cache_size"] = _cache_size(options, server)
    notes["adapters_in_rotation"] = len(gen.workload.adapters)
    single_phase(gen, options, server, notes)


def _overload(gen: LoadGenerator, options: LoadOptions, server: ServerInfo, notes: dict) -> None:
    stats = server.stats
    if options.capacity:
        capacity, source = options.capacity, "--capacity"
    else:
        clients = (stats.max_batch_size if stats is not None else 0) or options.concurrency
        phase = gen.closed_loop("calibrate", clients, options.calibrate)
        done = sum(s.code == OK for s in gen.samples if s.phase == "calibrate")
        if not done:
            raise LoradockError(f"overload: no request succeeded in {options.calibrate:g} s of calibration; "
                                "check the server, or give --capacity")
        capacity, source = done / phase.duration_s, f"measured: {clients} closed-loop clients for {phase.duration_s:.1f} s"
        notes["warmup_phases"] = ["calibrate"]
    # The generator's limit must sit above what the server admits, or the server never sees the overload.
    admits = stats.max_batch_size + stats.max_queue if stats is not None else 0  # over HTTP: unknown, --max-in-flight rules
    in_flight = min(max(options.max_in_flight, admits + 16), OVERLOAD_MAX_IN_FLIGHT)
    rate = capacity * options.overload_factor
    notes["overload"] = {"capacity_rps": round(capacity, 3), "capacity_source": source, "factor": options.overload_factor,
                         "rate_rps": round(rate, 3), "max_in_flight": in_flight,
                         "server_admits": {"max_batch_size": stats.max_batch_size, "max_queue": stats.max_queue}
                         if stats is not None else None}
    gen.open_loop("overload", rate, options.duration, in_flight)


def reg_command(args: list[str], home: Path | None = None) -> subprocess.CompletedProcess:
    """Run the `reg` CLI of this checkout (the rollout commands are issue 5's), against `home` if given."""
    command = [sys.executable, "-c", "from cli.main import run; run()", *args, *(["--home", str(home)] if home else [])]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)


def _reg(args: list[str], home: Path) -> str:
    done = reg_command(args, home)
    if done.returncode != 0:
        message = " ".join((done.stderr or done.stdout).split())[-400:]
        raise RolloutUnavailable(f"`reg {' '.join(args)}` failed (exit {done.returncode}): {message}")
    return done.stdout


def _canary_steps(text: str) -> list[int]:
    try:
        steps = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise InvalidInput(f"--canary-steps {text!r}: give whole percentages, e.g. 5,25,50") from None
    if not steps or any(not 0 < s < 100 for s in steps) or steps != sorted(set(steps)):
        raise InvalidInput(f"--canary-steps {text!r}: rising percentages between 1 and 99, e.g. 5,25,50")
    return steps


def _canary(gen: LoadGenerator, options: LoadOptions, server: ServerInfo, notes: dict) -> None:
    steps = _canary_steps(options.canary_steps)
    if not options.keys:
        raise InvalidInput("--keys 0: canary needs routing keys to check that the split is sticky")
    home = options.home or (Path(os.environ["LORADOCK_HOME"]) if os.environ.get("LORADOCK_HOME") else None)
    if home is None:
        raise InvalidInput("--home: canary changes the rollout in the server's registry; give its home directory")
    name = gen.workload.adapters[0].ref
    if reg_command(["rollout", "--help"]).returncode != 0:
        raise RolloutUnavailable("canary needs `reg rollout` (issue 5), and this checkout's `reg` has no rollout command")
    versions = [v["number"] for v in json.loads(_reg(["ls", name, "--json"], home))]
    if len(versions) < 2:
        raise InvalidInput(f"--adapters {name}: canary splits the two newest versions, and {name} has {len(versions)}; "
                           "push another (`python -m load_tests prepare` makes a two-version `canary`)")
    new, old = versions[0], versions[1]
    notes["canary"] = {"adapter": name, "old": f"{name}:{old}", "new": f"{name}:{new}", "steps": []}

    def set_split(percent: int) -> None:
        _reg(["rollout", "set", name, "--arm", f"{old}={100 - percent}", "--arm", f"{new}={percent}", "--sticky",
              "--reason", f"load test canary: {percent}% to {name}:{new}"], home)
        notes["canary"]["steps"].append({"new_percent": percent, "at_s": round(gen.now(), 3)})

    set_split(steps[0])
    time.sleep(2.0)  # a running server applies a rollout change "within a second or two" (issue 5)
    events = [(options.duration * i / len(steps), f"{name}:{new} -> {p}%", lambda p=p: set_split(p))
              for i, p in enumerate(steps[1:], start=1)]
    try:
        gen.closed_loop("canary", options.concurrency, options.duration, events)
    finally:
        _reg(["rollout", "clear", name, "--reason", "load test canary finished"], home)


PRESETS: dict[str, Preset] = {
    p.name: p for p in [
        Preset("steady", "32 clients, 8 adapters, closed loop.", lambda o, s: _take(o, s, 8, "steady"), single_phase,
               {"concurrency": 32}),
        Preset("many-adapters", "Twice the server's adapter cache in round-robin rotation: eviction and cold loads.",
               _many_adapters, _many_adapters_phase, {"concurrency": 16, "mix": "round-robin"}),
        Preset("overload", "Capacity measured (or --capacity), then Poisson arrivals at 4x it.",
               lambda o, s: _take(o, s, min(4, max(1, len(s.adapters))), "overload"), _overload),
        Preset("canary", "A sticky 95/5 rollout between an adapter's two newest versions, raised live.",
               _canary_adapter, _canary, {"concurrency": 16}),
    ]
}
