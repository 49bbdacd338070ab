"""Capture over a remote registry: an inference server started on `--registry grpc://...` captures like one on a local
registry. `reg --registry URL capture set` reaches it, its redacted captures land in the registry's database, the
summary and rows read remotely equal the local ones, and each Capture RPC needs its role.

A real Registry server on port 0 (tokens required) over a real SQLite home, and a real inference server on the tiny
Llama backed by it; nothing is mocked.
"""

from __future__ import annotations

import inspect
import json
from datetime import datetime, timezone

import grpc
import pytest
from conftest import TINY_BASE, make_adapter_dir, run_reg, wait_until
from remote_helpers import registry_with_base, start_registry

from registry import Registry
from registry.capture import REDACTED, CaptureConfig, CapturedRequest, Captures
from registry.errors import InvalidInput, PermissionDenied
from registry.interface import CapturesAPI
from registry.remote.client import MAX_CAPTURE_BATCH_BYTES, RemoteCaptures, RemoteRegistry
from registry.remote.rpc import pb
from registry.rollouts import FeedbackRecord
from server.app import create_server, shutdown
from server.client import LoradockClient
from server.options import ServerOptions
from server.tokens import create_token

OPTIONS = dict(base=TINY_BASE, quant="none", port=0, max_batch_size=8, max_adapters=4, default_max_new_tokens=3)
# token name -> its roles: an operator, a reader, an admin, and the inference server's own (it reads its routing and
# capture configs and pulls adapters, and writes what it served)
TOKENS = {"ops": "read,push", "reader": "read", "boss": "admin", "inference": "read,push"}
PERMISSION_DENIED_EXIT = 11


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_base_dir):
    """A registry (adapters `support`, `notes`) served with tokens, and an inference server over it elsewhere."""
    tmp = tmp_path_factory.mktemp("capture-remote")
    home = tmp / "registry-home"
    reg = registry_with_base(home, tiny_base_dir, TINY_BASE)
    adapter = make_adapter_dir(tiny_base_dir, tmp / "adapter", "lora", seed=72)
    for name in ("support", "notes"):
        reg.push(adapter, name, allow_duplicate=True)
    tokens_file = tmp / "tokens.yaml"
    tokens = {name: create_token(name, roles, tokens_file) for name, roles in TOKENS.items()}
    registry_server, url, _ = start_registry(home, auth_tokens=str(tokens_file))
    server_home = tmp / "server-home"  # the inference server's own: its base and adapter cache, no registry state
    registry_with_base(server_home, tiny_base_dir, TINY_BASE).close()
    backing = RemoteRegistry(url, token=tokens["inference"], home=server_home)
    server, port, service = create_server(ServerOptions(**OPTIONS), backing)
    client = LoradockClient(f"127.0.0.1:{port}", timeout=60)
    remotes = {name: RemoteRegistry(url, token=token, home=tmp / f"cache-{name}") for name, token in tokens.items()}
    yield {"reg": reg, "url": url, "tokens": tokens, "service": service, "client": client, "remote": remotes,
           "server_home": server_home}
    for remote in remotes.values():
        remote.close()
    client.close()
    shutdown(server, service, 0)
    backing.close()
    registry_server.stop(0)
    reg.close()



def reg_cli(capsys, served, token: str, *args: str) -> tuple[int, str, list[str]]:
    """`reg --registry URL --token T ARGS` in this process: (exit code, stdout, the CLI's `error: ...` lines; the
    servers' log lines, which run in this process too, left out)."""
    code, out, err = run_reg(capsys, "--registry", served["url"], "--token", served["tokens"][token], *args)
    return code, out, [line for line in err.splitlines() if line.startswith("error: ")]


def captured(adapter: str, request_id: str, prompt: str = "", messages=(), response: str = "ok", at: str = "",
             revision: int | None = None, latency_ms: float | None = 2.5) -> CapturedRequest:
    return CapturedRequest(adapter, 1, revision, "A" if revision else "", request_id, "k" if revision else "", prompt,
                           list(messages), response, "OK", latency_ms, at)


def test_both_captures_implement_the_captures_api_with_the_same_signatures():
    declared = [name for name, value in vars(CapturesAPI).items() if not name.startswith("_") and callable(value)]
    assert {"set", "all", "change_id", "record", "rows", "summary"} <= set(declared)
    for name in declared:
        want = [(p.name, p.kind, p.default, p.annotation) for p in inspect.signature(vars(CapturesAPI)[name]).parameters.values()]
        for cls in (Captures, RemoteCaptures):
            got = [(p.name, p.kind, p.default, p.annotation) for p in inspect.signature(getattr(cls, name)).parameters.values()]
            assert got == want, f"{cls.__name__}.{name}"


def test_capture_set_over_the_remote_cli_reaches_the_server_and_its_redacted_capture_lands_in_the_registry(served, capsys):
    reg, client, worker = served["reg"], served["client"], served["service"].rollout_worker
    code, out, errors = reg_cli(capsys, served, "ops", "capture", "set", "support", "--sample", "1", "--retain", "7d")
    assert code == 0 and not errors and "capture on for support: 1 of requests, kept 1w" in out
    wait_until(lambda: "support" in worker.capture, "the server to pick up support's capture config")
    assert worker.capture["support"][0] == reg.captures.get("support") == CaptureConfig(retain_s=7 * 86400)

    messages = [{"role": "user", "content": "reach me at carol.smith@example.org or 4111 1111 1111 1111"}]
    done = client.generate(adapter="support", messages=messages, max_new_tokens=3)
    wait_until(lambda: reg.captures.rows("support"), "the captured request to be written to the registry")
    [row] = reg.captures.rows("support")
    assert row["request_id"] == done.request_id and row["version"] == 1 and row["response"] == done.text
    assert row["messages"] == [{"role": "user", "content": f"reach me at {REDACTED} or {REDACTED}"}]
    assert "example" not in json.dumps(row) and "4111" not in json.dumps(row)

    client.feedback(done.request_id, score=-1.0, correction="Write to dave@example.net instead")
    wait_until(lambda: reg.captures.rows("support")[0]["correction"], "the feedback's correction to be written")
    assert reg.captures.rows("support")[0]["correction"] == f"Write to {REDACTED} instead"
    server_home = Registry(served["server_home"])
    assert server_home.conn.execute("SELECT COUNT(*) FROM captures").fetchone()[0] == 0  # nothing kept where it served
    server_home.close()
    [entry] = [e for e in reg.audit_entries() if e["action"] == "capture.set"]
    assert entry["token"] == "ops" and entry["target"] == "support" and entry["detail"]["retain_s"] == 7 * 86400

    code, out, errors = reg_cli(capsys, served, "ops", "capture", "off", "support")
    assert code == 0 and "capture off for support" in out
    wait_until(lambda: "support" not in worker.capture, "the server to stop capturing support")


def test_a_token_without_the_role_is_refused_in_one_line(served, capsys):
    code, _, errors = reg_cli(capsys, served, "reader", "capture", "set", "notes")
    assert code == PERMISSION_DENIED_EXIT
    assert errors == [f"error: registry {served['url']}: token 'reader' has role(s) read; CaptureSet needs 'push'"]
    assert served["reg"].captures.get("notes") is None  # refused: nothing written
    code, out, errors = reg_cli(capsys, served, "reader", "capture", "show", "notes")
    assert code == 0 and not errors and "capture is off for notes" in out  # a summary holds no user text: `read`
    with pytest.raises(PermissionDenied) as refused:
        served["remote"]["ops"].captures.rows("notes")  # the captured texts themselves: admin only
    assert str(refused.value) == f"registry {served['url']}: token 'ops' has role(s) push, read; CaptureRows needs 'admin'"
    for token, call in (("reader", lambda c: c.record([captured("notes", "r-1")])), ("reader", lambda c: c.clear("notes")),
                        ("reader", lambda c: c.expire()), ("inference", lambda c: c.rows("notes"))):
        with pytest.raises(PermissionDenied, match=r"needs '(push|admin)'$"):
            call(served["remote"][token].captures)


def test_summary_and_rows_read_remotely_equal_the_local_ones(served, capsys):
    reg, ops, boss = served["reg"], served["remote"]["ops"].captures, served["remote"]["boss"].captures
    config = ops.set("notes", CaptureConfig(sample=0.5, retain_s=3600, max_bytes=2**30, redact=(r"secret-\d+",)))
    assert config == reg.captures.get("notes") == ops.get("notes") == ops.all()["notes"]
    assert ops.change_id() == reg.captures.change_id()
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    batch = [captured("notes", "n-chat", messages=[{"role": "system", "content": "be brief"},
                                                   {"role": "user", "content": "my code is secret-42"}], at=now),
             captured("notes", "n-raw", prompt="plain prompt", response="answer secret-7", at=now, revision=3),
             captured("notes", "n-slow", prompt="no latency", latency_ms=None, at=now),
             captured("support", "s-off", prompt="capture is off for support", at=now)]  # not stored: capture off
    assert ops.record(batch) == 3
    assert ops.record(batch) == 0  # the same batch again (a retry after a lost reply): stored once
    reg.rollouts.record([], [FeedbackRecord("n-chat", "notes", 1, None, "", 1.0, "", now, "shorter"),
                             FeedbackRecord("n-raw", "notes", 1, 3, "A", None, "good", now)])

    local_rows = reg.captures.rows("notes")
    assert [r["request_id"] for r in local_rows] == ["n-chat", "n-raw", "n-slow"]
    assert local_rows[0]["messages"][1]["content"] == f"my code is {REDACTED}" and local_rows[2]["latency_ms"] is None
    assert json.dumps(boss.rows("notes")) == json.dumps(local_rows)  # same keys, order and values
    assert boss.rows("notes", since=now, limit=2) == reg.captures.rows("notes", since=now, limit=2)
    assert boss.rows("notes", since="9999") == [] and boss.rows("no-such-adapter") == []
    assert json.dumps(ops.summary("notes")) == json.dumps(reg.captures.summary("notes"))
    assert ops.summary("never-captured") == reg.captures.summary("never-captured")
    code, remote_json, _ = reg_cli(capsys, served, "reader", "capture", "show", "notes", "--json")
    code_local, local_json, _ = run_reg(capsys, "capture", "show", "notes", "--json", "--home", str(reg.home))
    assert code == code_local == 0 and remote_json == local_json and json.loads(local_json)["with_feedback"] == 2

    big = [captured("notes", f"big-{i}", prompt="x" * 2**20, at=now) for i in range(5)]  # in more than one call
    assert 5 * 2**20 > MAX_CAPTURE_BATCH_BYTES and ops.record(big) == 5
    assert ops.expire() == 0  # nothing past its retention (an hour) or size bound
    code, out, _ = reg_cli(capsys, served, "ops", "capture", "clear", "notes")
    assert code == 0 and "deleted 8 captured requests of notes" in out and reg.captures.rows("notes") == []
    assert ops.off("notes") is True and ops.off("notes") is False and ops.get("notes") is None


def test_a_bad_setting_sent_over_the_wire_is_refused_by_the_registry_in_one_line(served, capsys):
    remote = served["remote"]["ops"]
    bad = pb.CaptureSetRequest(adapter="notes", config=pb.CaptureConfig(sample=5, retain_s=3600, max_bytes=2**20))
    with pytest.raises(grpc.RpcError) as refused:  # a client other than ours: CaptureConfig never checked it
        remote.stub.CaptureSet(bad, metadata=remote.metadata, timeout=60)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == "--sample 5.0: expected a share of requests, 0 < sample <= 1"
    assert served["reg"].captures.get("notes") is None
    with pytest.raises(InvalidInput, match="no config was sent"):
        remote._call("CaptureSet", pb.CaptureSetRequest(adapter="notes"))
    code, _, errors = reg_cli(capsys, served, "ops", "capture", "export", "notes", "--out", "x.jsonl")
    assert code != 0 and len(errors) == 1 and "`reg capture export` works on a local registry only" in errors[0]
