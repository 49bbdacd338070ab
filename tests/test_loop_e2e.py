"""The continuous fine-tuning loop end to end on the tiny Llama: a real server with capture on, simulated users giving
feedback (and corrections) by style, a real worker process training the candidate, the gate, a real canary rollout
served by the server, and the decision; each turn's steps and numbers are read back from `reg loop show`.

The users like answers that start with STYLE; to any other answer they say so and give the answer they wanted
(STYLE + the arithmetic). A candidate trained on that should answer in STYLE more often than the champion did.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY_BASE, wait_until

from cli.main import main
from registry import Registry
from registry.capture import CaptureConfig
from registry.loops import LoopConfig, parse_gate, parse_guard
from server.app import create_server, shutdown
from server.client import LoradockClient
from server.options import ServerOptions
from trainer.loop import LoopRunner

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
ARITH = [json.loads(line) for line in (ROOT / "examples" / "arith.jsonl").read_text().splitlines()]
STYLE = "Sure! "
OPTIONS = dict(base=TINY_BASE, quant="none", port=0, max_batch_size=8, max_adapters=4, default_max_new_tokens=12)



@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_base_dir):
    """`support:1` (the champion, @prod) trained on plain arithmetic; a server over its registry, capture on."""
    from trainer.config import load_config
    from trainer.train import train

    tmp = tmp_path_factory.mktemp("loop")
    reg = Registry(tmp / "home")
    reg.add_base(str(tiny_base_dir), TINY_BASE)
    data = tmp / "arith.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ARITH[:48]))
    config = {"base_model": TINY_BASE, "adapter": "lora", "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0,
              "datasets": [{"path": str(data), "type": "alpaca"}], "val_set_size": 8, "sequence_len": 48,
              "micro_batch_size": 8, "max_steps": 60, "learning_rate": 0.01, "seed": 5, "push": {"name": "support"},
              "evaluation": {"max_examples": 8, "max_new_tokens": 12, "max_general_ppl_ratio": None}}
    (tmp / "support.yaml").write_text(yaml.safe_dump(config))
    train(load_config(tmp / "support.yaml"), reg, progress=False)
    reg.set_alias("support", "prod", 1)
    reg.captures.set("support", CaptureConfig(sample=1.0))
    server, port, service = create_server(ServerOptions(**OPTIONS), reg)
    wait_until(lambda: "support" in service.rollout_worker.capture, "the server to pick up capture")
    client = LoradockClient(f"127.0.0.1:{port}", timeout=120)
    yield {"reg": reg, "service": service, "client": client, "tmp": tmp}
    client.close()
    shutdown(server, service, 0)
    reg.close()


def ask(client, prompt: str, adapter: str = "support", key: str = ""):
    return client.generate(adapter=adapter, messages=[{"role": "user", "content": prompt}], max_new_tokens=12,
                           routing_key=key)


def users(world, prompts: list[dict], corrupt: bool = False, key_prefix: str = "u") -> None:
    """Each prompt asked once (its own routing key); feedback by style, with a correction to any answer not in it.

    `corrupt`: the users dislike every answer and correct it with noise (a worse candidate comes of them)."""
    for i, row in enumerate(prompts):
        done = ask(world["client"], row["instruction"], key=f"{key_prefix}-{i}")
        if done.text.startswith(STYLE) and not corrupt:
            world["client"].feedback(done.request_id, score=1.0)
        else:
            wanted = f"zq {row['output'][::-1]} xv kk" if corrupt else STYLE + row["output"]
            world["client"].feedback(done.request_id, score=-1.0, correction=wanted)


def run_worker(world) -> None:
    log = world["tmp"] / "worker.log"
    worker = subprocess.Popen([str(Path(sys.executable).parent / "reg"), "worker", "--max-jobs", "1", "--lease-s", "5",
                               "--home", str(world["reg"].home)], env={**os.environ, "OMP_NUM_THREADS": "1"},
                              stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    try:
        assert worker.wait(900) == 0, log.read_text()[-3000:]  # a backstop, never a measure of speed
    finally:
        if worker.poll() is None:
            worker.kill()


def style_rate(world, ref: str, prompts: list[dict]) -> float:
    return sum(ask(world["client"], row["instruction"], adapter=ref).text.startswith(STYLE) for row in prompts) / len(prompts)


def loop_config(**changes) -> LoopConfig:
    settings = dict(schedule="manual", min_new_examples=10, gate=parse_gate("rouge_l>=champion"), canary=50,
                    promote_after=20, guard=parse_guard("error_rate<=0.5,min_requests=1000"), holdout=0.2)
    return LoopConfig(**{**settings, **changes})


def flushed(world) -> None:
    """What the server buffered (captures, feedback, outcomes) is in the registry, and the guards have judged it (as
    the server's own thread does after each write)."""
    worker = world["service"].rollout_worker
    worker.check_guards(worker.flush())


def test_a_turn_trained_on_liked_answers_is_promoted_and_answers_in_the_liked_style_more(world, capsys):
    reg, runner = world["reg"], LoopRunner(world["reg"])
    held_out = ARITH[1100:1120]
    champion_rate = style_rate(world, "support:1", held_out)
    users(world, ARITH[200:260])
    flushed(world)
    assert main(["loop", "run", "support", "--now", "--home", str(reg.home)]) != 0  # no loop yet: refused
    assert "has no loop: `reg loop set support` first" in capsys.readouterr().err
    reg.loops.set("support", loop_config())

    run = runner.step("support", trigger="manual")
    assert run["state"] == "train", run
    curated = next(s for s in reg.loops.runs("support")[0]["steps"] if s["step"] == "curate")
    assert curated["kept"] + curated["heldout"] >= 40 and curated["corrected"] >= 40  # the champion never said Sure!
    run_worker(world)
    run = runner.step("support")
    assert run["state"] == "canary", run
    wait_until(lambda: world["service"].router.current("support") is not None, "the server to route the canary")

    for round_ in range(20):  # keyed traffic until the candidate's arm has served promote_after requests
        users(world, ARITH[300 + 20 * round_:320 + 20 * round_], key_prefix=f"canary{round_}")
        flushed(world)
        run = runner.step("support")
        if run["ended_at"]:
            break
    assert run["state"] == "promoted", run
    assert reg.aliases("support")["prod"] == 2 and reg.rollouts.current("support").arms[-1].version == 2
    assert style_rate(world, "support:2", held_out) > champion_rate  # it answers as the users like more often

    assert main(["loop", "show", "support", "--json", "--home", str(reg.home)]) == 0
    shown = json.loads(capsys.readouterr().out)
    [turn] = shown["history"]
    assert [s["step"] for s in turn["steps"]] == ["capture", "curate", "train", "gate", "canary", "decide"]
    gate = next(s for s in turn["steps"] if s["step"] == "gate")
    assert gate["passed"] and gate["candidate_metrics"]["rouge_l"] >= gate["champion_metrics"]["rouge_l"]
    assert turn["candidate"] == 2 and turn["job_id"] and turn["dataset_sha256"]


def test_a_candidate_trained_on_corrupted_feedback_stops_at_the_gate(world):
    reg, runner = world["reg"], LoopRunner(world["reg"])
    reg.captures.clear("support")
    users(world, ARITH[600:720], corrupt=True, key_prefix="noise")
    flushed(world)
    reg.loops.set("support", loop_config(gate=parse_gate("rouge_l>=champion,loss<=champion")))
    run = runner.step("support", trigger="manual")
    assert run["state"] == "train", run
    run_worker(world)
    run = runner.step("support")
    assert run["state"] == "stopped_at_gate" and "fixed held-out set: loss: candidate" in run["reason"], run
    assert reg.aliases("support")["prod"] == 2  # the champion stays
    turn = reg.loops.runs("support")[0]
    curated = next(s for s in turn["steps"] if s["step"] == "curate")
    assert curated["corrected"] == curated["with_feedback"] == 120  # all it learned from was the noise
    gate = next(s for s in turn["steps"] if s["step"] == "gate")
    # it even looks better on the whole gate set, whose fresh slice is cut from the same noise: the fixed set stops it
    assert gate["candidate_metrics"]["loss"] < gate["champion_metrics"]["loss"]
    assert not gate["passed"] and gate["fixed_candidate_metrics"]["loss"] > gate["fixed_champion_metrics"]["loss"]


def test_a_candidate_that_draws_negative_feedback_live_is_rolled_back(world):
    """The gate passes it (a permissive gate), but users dislike what it serves in the canary: rolled back."""
    reg, runner = world["reg"], LoopRunner(world["reg"])
    reg.captures.clear("support")
    users(world, ARITH[800:860], key_prefix="third")
    flushed(world)
    reg.loops.set("support", loop_config(gate=parse_gate("rouge_l>=0,general_perplexity<=champion*2"), promote_after=40))
    run = runner.step("support", trigger="manual")
    run_worker(world)
    run = runner.step("support")
    assert run["state"] == "canary", run
    candidate = run["candidate"]
    assert candidate == 4 and reg.resolve("support:4").parent == 2  # its lineage names the champion, not support:3
    wait_until(lambda: (world["service"].router.current("support") or None) is not None
               and world["service"].router.current("support").arms[-1].version == candidate, "the canary to be routed")
    for round_ in range(30):
        for i in range(20):  # the champion's answers are liked, the candidate's are not
            done = ask(world["client"], ARITH[900 + i]["instruction"], key=f"live{round_}-{i}")
            world["client"].feedback(done.request_id, score=1.0 if done.adapter_version != f"support:{candidate}" else -1.0)
        flushed(world)
        run = runner.step("support")
        if run["ended_at"]:
            break
    assert run["state"] == "rolled_back" and "worse than the champion" in run["reason"], run
    assert reg.aliases("support")["prod"] == 2 and candidate not in [a.version for a in reg.rollouts.current("support").arms]
    decide = next(s for s in reg.loops.runs("support")[0]["steps"] if s["step"] == "decide")
    assert decide["decision"] == "rolled_back" and decide["comparisons"]


def test_a_candidate_whose_answers_fail_live_is_rolled_back_by_the_guard(world):
    """The gate passes it, then its stored weights go bad: every canary request it gets fails, the rollout's guard
    routes everything back to the champion, and the loop's turn ends rolled back, saying the guard did it."""
    import grpc

    reg, runner = world["reg"], LoopRunner(world["reg"])
    reg.captures.clear("support")
    users(world, ARITH[960:1020], key_prefix="fourth")
    flushed(world)
    reg.loops.set("support", loop_config(gate=parse_gate("rouge_l>=0,general_perplexity<=champion*2"),
                                         guard=parse_guard("error_rate<=0.2,min_requests=5"), promote_after=500))
    run = runner.step("support", trigger="manual")
    run_worker(world)
    run = runner.step("support")
    assert run["state"] == "canary", run
    candidate = reg.resolve(f"support:{run['candidate']}")
    weights = next(f for f in candidate.files if f.path == "adapter_model.safetensors")
    blob = reg.blobs.path(weights.sha256)
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[-5] ^= 0xFF
    blob.write_bytes(bytes(data))
    wait_until(lambda: (world["service"].router.current("support") or None) is not None
               and world["service"].router.current("support").arms[-1].version == candidate.number, "the canary to be routed")
    failed = 0
    for i in range(400):  # keyed requests until the guard has routed everything back
        try:
            ask(world["client"], ARITH[i]["instruction"], key=f"guarded-{i}")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.DATA_LOSS, exc.details()
            failed += 1
        if i % 20 == 19:
            flushed(world)
            current = reg.rollouts.current("support")
            if candidate.number not in [a.version for a in current.arms]:
                break
    run = runner.step("support")
    assert failed >= 5 and run["state"] == "rolled_back" and run["reason"].startswith("the guard changed the rollout"), run
    decide = next(s for s in reg.loops.runs("support")[0]["steps"] if s["step"] == "decide")
    assert decide["decision"] == "rolled_back" and decide["by"] == "the guard"
    assert reg.aliases("support")["prod"] == 2  # the champion stays


def test_a_scheduled_evaluation_below_its_floor_is_a_degrade_trigger(world, capsys):
    """`--eval-every` evaluates the champion on a fixed file, recorded with it; below `--eval-floor`, it is degraded.
    A second look within the interval evaluates nothing again."""
    from registry.loops import parse_floor

    reg, runner = world["reg"], LoopRunner(world["reg"])
    fixed = world["tmp"] / "fixed-gate.jsonl"
    fixed.write_text("".join(json.dumps(r) + "\n" for r in ARITH[1150:1160]))
    champion = runner.champion("support")
    named = lambda: [e for e in reg.evaluations(champion.id) if e["name"] == "eval:fixed-gate.jsonl"]  # noqa: E731
    unreachable = loop_config(eval_every="daily", eval_data=str(fixed), eval_floor=parse_floor("exact_match>=1.5"))
    assert runner._below_floor("support", champion, unreachable) and len(named()) == 1
    assert not runner._below_floor("support", champion, unreachable) and len(named()) == 1  # not due again yet
    met = loop_config(eval_every="every 5m", eval_data=str(fixed), eval_floor=parse_floor("exact_match>=0"))
    reg.conn.execute("UPDATE evaluations SET created_at='2000-01-01T00:00:00.000+00:00' WHERE name='eval:fixed-gate.jsonl'")
    reg.conn.commit()
    assert not runner._below_floor("support", champion, met) and len(named()) == 2  # due again: evaluated, above

    home = str(reg.home)
    for args, message in ((["--eval-every", "daily"], "--eval-every needs --eval-data FILE and --eval-floor RULES"),
                          (["--eval-every", "daily", "--eval-data", str(fixed), "--eval-floor", "exact_match>=champion"],
                           "--eval-floor exact_match>=champion: a floor is a fixed number"),
                          (["--eval-data", str(fixed) + ".missing"], "no such file")):
        before = reg.loops.get("support")
        assert main(["loop", "set", "support", *args, "--home", home]) == 2
        assert message in capsys.readouterr().err and reg.loops.get("support") == before  # nothing changed
