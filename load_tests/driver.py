"""A whole load test: connect to the server, pick and check the adapters, run the phases, write the report.

`run_load` ties the generator (load_tests/run.py), the presets (presets.py) and the report (report.py)
together; none of them imports this module, so none of them imports another back.
"""

from __future__ import annotations

import time
from pathlib import Path

from registry.errors import InvalidInput, NotFound
from registry.names import parse_ref

from . import report
from .presets import get_preset, single_phase
from .protocols import open_transport
from .run import LoadGenerator, LoadOptions, ServerInfo, Unreachable
from .workload import AdapterChoice, Workload, load_prompts, parse_adapters


def connect(options: LoadOptions, ready_timeout: float = 5.0):
    """(transport, ServerInfo): the protocol's transport, and what the server serves; Unreachable if it does not answer."""
    transport = open_transport(options)
    try:
        server = transport.server_info(ready_timeout)
    except Exception as exc:
        transport.close()
        raise Unreachable(f"--target {options.target!r}: cannot reach a loradock server there over {transport.protocol} "
                          f"({transport.failure(exc, ready_timeout)}); {transport.hint}") from None
    return transport, server


def check_adapters(choices: list[AdapterChoice], server: ServerInfo, target: str) -> None:
    for choice in choices:
        name = parse_ref(choice.ref).name
        if name not in server.adapters:
            listed = ", ".join(server.adapters[:20]) or "none"
            raise NotFound(f"--adapters: adapter {name!r} is not served at {target} (it serves: {listed}); "
                           "push it to the server's registry (`python -m load_tests prepare` makes test adapters)")


def default_out(preset: str | None) -> Path:
    return Path("load-test-out") / f"{preset or 'run'}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_load(options: LoadOptions, preset_name: str | None = None, console=None, live: bool = True) -> dict:
    """Run a load test (a preset, or one closed- or open-loop phase); write and return the report."""
    preset = get_preset(preset_name) if preset_name else None
    options.validate()
    prompts = load_prompts(options.prompts)
    client, server = connect(options)
    try:
        if preset:
            choices = preset.choose_adapters(options, server)
        elif options.adapters:
            choices = parse_adapters(options.adapters)
        else:
            raise InvalidInput("give --adapters NAME,NAME,... or a --preset that picks them")
        check_adapters(choices, server, options.target)
        workload = Workload(choices, prompts, keys=options.keys, mix=options.mix, seed=options.seed)
        gen = LoadGenerator(client, workload, options, live=live, console=console)
        notes: dict = {}
        interrupted = False
        try:
            (preset.drive if preset else single_phase)(gen, options, server, notes)
        except KeyboardInterrupt:
            interrupted = True
        after, unanswered = client.stats()
        if unanswered:
            notes["stats_after_error"] = unanswered
        result = report.build(options, preset_name, choices, gen, server.stats, after, notes, interrupted,
                              alive_after=unanswered is None)
    finally:
        client.close()
    report.write(result, gen, options.out or default_out(preset_name))
    return result
