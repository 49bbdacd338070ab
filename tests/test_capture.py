"""Capture: opt-in per adapter, sampled, redacted before it is stored, bounded by retention and size, cleared on
request; corrections ride on feedback; `reg capture export` curates what was captured into a dataset.

The server tests run a real gRPC server on the tiny Llama over a real registry; nothing is mocked.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from conftest import TINY_BASE, make_adapter_dir, wait_until

from cli.main import main
from registry import Registry
from registry.capture import REDACTED, CaptureConfig, CapturedRequest
from registry.errors import InvalidInput, NotFound
from registry.rollouts import FeedbackRecord
from server.app import create_server, shutdown
from server.client import LoradockClient
from server.options import ServerOptions

OPTIONS = dict(base=TINY_BASE, quant="none", port=0, max_batch_size=8, max_adapters=4, default_max_new_tokens=4)


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_base_dir):
    """A server over a registry with adapters `support` (capture on, below) and `quiet` (capture never on)."""
    home, work = tmp_path_factory.mktemp("capture-home"), tmp_path_factory.mktemp("capture-adapters")
    reg = Registry(home)
    reg.add_base(str(tiny_base_dir), TINY_BASE)
    adapter = make_adapter_dir(tiny_base_dir, work / "a", "lora", seed=71)
    for name in ("support", "quiet"):
        reg.push(adapter, name, allow_duplicate=True)
    server, port, service = create_server(ServerOptions(**OPTIONS), reg)
    client = LoradockClient(f"127.0.0.1:{port}", timeout=60)
    yield {"reg": reg, "service": service, "client": client, "home": home}
    client.close()
    shutdown(server, service, 0)
    reg.close()



def set_capture(served, name: str, config: CaptureConfig) -> None:
    served["reg"].captures.set(name, config)
    wait_until(lambda: served["service"].rollout_worker.capture.get(name, (None,))[0] == config,
               f"the server to pick up {name}'s capture config")


def test_capture_is_off_by_default_and_a_server_keeps_a_redacted_copy_once_it_is_on(served):
    reg, client = served["reg"], served["client"]
    client.generate("my mail is bob@example.com", adapter="quiet", max_new_tokens=2)
    set_capture(served, "support", CaptureConfig(sample=1.0))
    messages = [{"role": "user", "content": "reach me at carol.smith@example.org or 4111 1111 1111 1111"}]
    done = client.generate(adapter="support", messages=messages, max_new_tokens=3, routing_key="user-7")
    wait_until(lambda: reg.captures.rows("support"), "the captured request to be written")
    [row] = reg.captures.rows("support")
    assert row["request_id"] == done.request_id and row["version"] == 1 and row["response"] == done.text
    assert row["messages"] == [{"role": "user", "content": f"reach me at {REDACTED} or {REDACTED}"}]
    assert "example" not in json.dumps(row) and "4111" not in json.dumps(row)
    assert reg.captures.rows("quiet") == []  # never opted in: nothing kept

    client.feedback(done.request_id, score=-1.0, correction="Write to dave@example.net instead")
    wait_until(lambda: reg.captures.rows("support")[0]["correction"], "the feedback's correction to be written")
    [row] = reg.captures.rows("support")
    assert row["feedback_score"] == -1.0 and row["correction"] == f"Write to {REDACTED} instead"


def test_the_sample_rate_decides_what_is_kept(served):
    reg, client = served["reg"], served["client"]
    reg.captures.clear("support")
    set_capture(served, "support", CaptureConfig(sample=1e-9))  # in effect none
    for i in range(6):
        client.generate(f"question {i}", adapter="support", max_new_tokens=2)
    set_capture(served, "support", CaptureConfig(sample=1.0))
    last = [client.generate(f"again {i}", adapter="support", max_new_tokens=2).request_id for i in range(3)]
    wait_until(lambda: len(reg.captures.rows("support")) >= 3, "three captured requests")
    assert [r["request_id"] for r in reg.captures.rows("support")] == last  # none of the six sampled out


def test_feedback_correction_is_dropped_while_capture_is_off(served):
    reg, client = served["reg"], served["client"]
    done = client.generate("hello", adapter="quiet", max_new_tokens=2)
    client.feedback(done.request_id, score=1.0, correction="a better answer")
    wait_until(lambda: reg.conn.execute("SELECT COUNT(*) FROM feedback WHERE request_id=?", (done.request_id,)).fetchone()[0],
               "the feedback to be written")
    assert reg.conn.execute("SELECT correction FROM feedback WHERE request_id=?", (done.request_id,)).fetchone()[0] is None


def _captured(adapter: str, request_id: str, prompt: str, response: str, at: str) -> CapturedRequest:
    return CapturedRequest(adapter, 1, None, "", request_id, "", prompt, [], response, "OK", 5.0, at)


def test_retention_and_the_size_bound_delete_the_oldest_and_clear_deletes_everything(tmp_path, tiny_base_dir):
    reg = Registry(tmp_path / "home")
    reg.add_base(str(tiny_base_dir), TINY_BASE)
    reg.push(make_adapter_dir(tiny_base_dir, tmp_path / "a", "lora", seed=72), "bounded")
    reg.captures.set("bounded", CaptureConfig(sample=1.0, retain_s=3600, max_bytes=1024))
    now = datetime.now(timezone.utc)
    old, recent = ((now - timedelta(seconds=s)).isoformat(timespec="milliseconds") for s in (7200, 10))
    assert reg.captures.record([_captured("bounded", "old", "p", "r", old), _captured("bounded", "new", "p", "r", recent)]) == 2
    assert [r["request_id"] for r in reg.captures.rows("bounded")] == ["new"]  # past its retention: gone
    big = [_captured("bounded", f"big-{i}", "x" * 200, "y" * 200, recent) for i in range(5)]  # 400 bytes each
    reg.captures.record(big)
    kept = reg.captures.rows("bounded")
    assert sum(len(r["prompt"]) + len(r["response"]) for r in kept) <= 1024
    assert [r["request_id"] for r in kept] == ["big-3", "big-4"]  # the oldest went first
    reg.rollouts.record([], [FeedbackRecord("big-4", "bounded", 1, None, "", 1.0, "", recent, "fixed")])
    assert reg.captures.rows("bounded")[-1]["correction"] == "fixed"
    assert reg.captures.clear("bounded") == 2
    assert reg.captures.rows("bounded") == [] and reg.conn.execute(
        "SELECT correction FROM feedback WHERE request_id='big-4'").fetchone()[0] is None
    assert reg.captures.get("bounded") is not None  # clear deletes data; `off` stops capturing
    assert reg.captures.off("bounded") and reg.captures.get("bounded") is None


@pytest.mark.parametrize("kwargs, message", [
    ({"sample": 0}, "--sample 0: expected a share of requests, 0 < sample <= 1"),
    ({"sample": 1.5}, "--sample 1.5"),
    ({"retain_s": 5}, "--retain 5 s: keep captured requests at least a minute"),
    ({"redact": ("[unclosed",)}, "--redact '[unclosed': not a regular expression"),
])
def test_a_bad_capture_setting_is_one_line_naming_it(kwargs, message):
    with pytest.raises(InvalidInput) as caught:
        CaptureConfig(**kwargs)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_reg_capture_set_show_export_clear_through_the_cli(tmp_path, tiny_base_dir, capsys):
    import yaml

    from trainer.config import load_config
    from trainer.train import train

    home = tmp_path / "home"
    reg = Registry(home)
    reg.add_base(str(tiny_base_dir), TINY_BASE)
    trained_on = [{"instruction": "What is 1+1?", "output": "2"}, {"instruction": "What is 2+2?", "output": "4"}] * 6
    data = tmp_path / "seed.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in trained_on[:2] + [
        {"instruction": f"What is {i}+{i}?", "output": str(2 * i)} for i in range(3, 12)]))
    config = {"base_model": TINY_BASE, "adapter": "lora", "lora_r": 4, "lora_alpha": 8, "datasets": [{"path": str(data), "type": "alpaca"}],
              "val_set_size": 2, "sequence_len": 48, "micro_batch_size": 4, "max_steps": 1, "seed": 1, "push": {"name": "helpdesk"},
              "evaluation": {"max_examples": 2, "max_new_tokens": 2, "max_general_ppl_ratio": None}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    train(load_config(tmp_path / "c.yaml"), reg, progress=False)

    assert main(["capture", "export", "helpdesk", "--out", str(tmp_path / "none.jsonl"), "--home", str(home)]) != 0
    assert "no capture for 'helpdesk': `reg capture set helpdesk` first" in capsys.readouterr().err
    assert main(["capture", "set", "helpdesk", "--retain", "forever", "--home", str(home)]) == 2
    assert "--retain 'forever': expected a duration such as 30d" in capsys.readouterr().err
    assert reg.captures.get("helpdesk") is None  # a refusal changes nothing
    assert main(["capture", "set", "helpdesk", "--sample", "1", "--retain", "7d", "--home", str(home)]) == 0

    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    chats = [("c-good", "What is 5+7?", "12", 1.0, "", None), ("c-bad", "What is 6+6?", "13", -1.0, "", None),
             ("c-fixed", "What is 20+20?", "41", -1.0, "", "40"), ("c-label", "What is 8+1?", "9", None, "good", None),
             ("c-dup", "What is 5+7?", "12", 1.0, "", None), ("c-trained", "What is 1+1?", "2", 1.0, "", None),
             ("c-silent", "What is 3+4?", "7", None, "", None)]
    reg.captures.record([CapturedRequest("helpdesk", 1, None, "", rid, "", "", [{"role": "user", "content": q}], a, "OK", 3.0, now)
                         for rid, q, a, *_ in chats])
    reg.rollouts.record([], [FeedbackRecord(rid, "helpdesk", 1, None, "", score, label, now, correction or "")
                             for rid, _, _, score, label, correction in chats if score is not None or label])
    capsys.readouterr()
    assert main(["capture", "show", "helpdesk", "--json", "--home", str(home)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["on"] and shown["requests"] == 7 and shown["with_feedback"] == 6 and shown["config"]["retain_s"] == 7 * 86400

    out = tmp_path / "curated.jsonl"
    assert main(["capture", "export", "helpdesk", "--out", str(out), "--since", "1d", "--json", "--home", str(home)]) == 0
    result = json.loads(capsys.readouterr().out)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    pairs = [(m["messages"][0]["content"], m["messages"][1]["content"]) for m in lines]
    assert pairs == [("What is 5+7?", "12"), ("What is 20+20?", "40"), ("What is 8+1?", "9")]  # good, corrected, labelled
    assert result["format"] == "chat" and result["counts"]["duplicates"] == 1 and result["counts"]["already_trained"] == 1
    from trainer.data import DatasetSpec, load_datasets

    assert len(load_datasets([DatasetSpec(str(out), "chat")]).examples) == 3  # the trainer reads it back as it is

    assert main(["capture", "clear", "helpdesk", "--home", str(home)]) == 0
    assert reg.captures.rows("helpdesk") == [] and "deleted 7 captured requests" in capsys.readouterr().out
    with pytest.raises(NotFound):
        reg.captures.set("no-such-adapter", CaptureConfig())
