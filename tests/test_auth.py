"""Access control: tokens file, roles on every RPC (exact status codes), the audit log, listening rules."""

from __future__ import annotations

import hashlib
import json
import os
import stat

import grpc
import pytest
from conftest import TINY_BASE, log_lines, run_reg
from remote_helpers import registry_with_base, start_registry

from registry import Registry
from registry.errors import Conflict, InvalidInput, PermissionDenied, Unauthenticated
from server.auth import ROLE_FOR_METHOD
from registry.remote.client import RemoteRegistry
from registry.remote.rpc import jobs_pb, jobs_pb_grpc, pb as registry_pb, pb_grpc as registry_pb_grpc
from server.rpc import pb, pb_grpc
from server.tokens import ROLES, TokenStore, create_token, load_tokens_file

OK, UNAUTH, DENIED = grpc.StatusCode.OK, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED


@pytest.fixture(scope="module")
def secured(tmp_path_factory, tiny_base_dir):
    """An inference server (which also serves the Registry) with a tokens file: one token per role, plus an env admin."""
    from conftest import make_adapter_dir

    from server.app import create_server, shutdown
    from server.options import ServerOptions

    tmp = tmp_path_factory.mktemp("auth")
    reg = registry_with_base(tmp / "home", tiny_base_dir, TINY_BASE)
    adapter = make_adapter_dir(tiny_base_dir, tmp / "adapter", "lora", seed=0)
    reg.push(adapter, "demo")
    tokens_file = tmp / "tokens.yaml"
    tokens = {role: create_token(f"only-{role}", role, tokens_file) for role in ROLES}
    os.environ["LORADOCK_ADMIN_TOKEN"] = tokens["env-admin"] = "env-admin-secret-token"
    try:
        options = ServerOptions(base=TINY_BASE, quant="none", port=0, max_batch_size=2, max_adapters=2,
                                default_max_new_tokens=2, auth_tokens=str(tokens_file))
        server, port, service = create_server(options, reg)
    finally:
        del os.environ["LORADOCK_ADMIN_TOKEN"]
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    with log_lines("server.auth") as log:
        yield {"port": port, "url": f"grpc://127.0.0.1:{port}", "tokens": tokens, "tokens_file": tokens_file, "log": log,
               "channel": channel, "reg": reg, "adapter": adapter, "home": tmp / "home"}
    channel.close()
    shutdown(server, service, 0)


def _requests(adapter_dir) -> dict:
    """A request per method that succeeds (or fails in one known way) for a caller with the right role."""
    config = adapter_dir / "adapter_config.json"
    digest = hashlib.sha256(config.read_bytes()).hexdigest()
    files = [registry_pb.FileEntry(path=p.name, size=p.stat().st_size, sha256=hashlib.sha256(p.read_bytes()).hexdigest())
             for p in sorted(adapter_dir.iterdir())]
    upload = lambda: iter([registry_pb.UploadBlobRequest(digest=digest, size=config.stat().st_size, data=config.read_bytes())])  # noqa: E731
    return {
        "Inference/Generate": (pb.GenerateRequest(adapter="demo", prompt="hi"), OK),
        "Inference/GenerateStream": (pb.GenerateRequest(prompt="hi"), OK),
        "Inference/Feedback": (pb.FeedbackRequest(request_id="unknown", score=1), grpc.StatusCode.NOT_FOUND),
        "Inference/ServerStats": (pb.ServerStatsRequest(), OK),
        "Inference/ListAdapters": (pb.ListAdaptersRequest(), OK),
        "Inference/LoadAdapter": (pb.LoadAdapterRequest(adapter="demo:1"), OK),
        "Inference/UnloadAdapter": (pb.UnloadAdapterRequest(adapter="demo:1"), OK),
        "Registry/Resolve": (registry_pb.RefRequest(ref="demo"), OK),
        "Registry/DownloadBlob": (registry_pb.DownloadBlobRequest(digest=digest), OK),
        "Registry/BlobURLs": (registry_pb.BlobURLsRequest(digests=[digest]), OK),
        "Registry/ListAdapters": (registry_pb.RegistryListRequest(), OK),
        "Registry/GetAdapter": (registry_pb.GetAdapterRequest(name="demo"), OK),
        "Registry/ListVersions": (registry_pb.ListVersionsRequest(name="demo"), OK),
        "Registry/Describe": (registry_pb.RefRequest(ref="demo:1"), OK),
        "Registry/Diff": (registry_pb.DiffRequest(ref_a="demo:1", ref_b="demo:1"), OK),
        "Registry/ListBases": (registry_pb.RegistryListRequest(), OK),
        "Registry/AliasHistory": (registry_pb.AliasHistoryRequest(name="demo"), OK),
        "Registry/RolloutShow": (registry_pb.RolloutRequest(name="demo"), OK),
        "Registry/RolloutReport": (registry_pb.RolloutRequest(name="demo"), OK),
        "Registry/HasBlobs": (registry_pb.HasBlobsRequest(digests=[digest]), OK),
        "Registry/UploadBlob": (upload, OK),
        "Registry/CommitPush": (registry_pb.CommitPushRequest(name="demo", files=files), OK),
        "Registry/SetAlias": (registry_pb.SetAliasRequest(name="demo", alias="prod", version=1), OK),
        "Registry/RemoveAlias": (registry_pb.RemoveAliasRequest(name="demo", alias="never-set"), grpc.StatusCode.NOT_FOUND),
        "Registry/RolloutChange": (registry_pb.RolloutChangeRequest(name="demo", action="clear"), grpc.StatusCode.NOT_FOUND),
        "Registry/RolloutState": (registry_pb.RolloutStateRequest(), OK),
        "Registry/RolloutRecord": (registry_pb.RolloutRecordRequest(), OK),
        "Registry/RemoveVersion": (registry_pb.RemoveVersionRequest(ref="demo:99"), grpc.StatusCode.NOT_FOUND),
        "Registry/Gc": (registry_pb.GcRequest(dry_run=True, grace_s=3600), OK),
        "Registry/Verify": (registry_pb.RefRequest(ref="demo:1"), OK),
        "Registry/Audit": (registry_pb.AuditRequest(limit=5), OK),
        "Registry/RecordRun": (registry_pb.RecordRunRequest(
            run_id="run-auth", adapter="demo", config=registry_pb.JsonObject(), config_hash="sha256:ab",
            base_name="no-such-base", base_digest="sha256:cd", datasets=registry_pb.JsonList(),
            libraries=registry_pb.JsonObject(), hardware=registry_pb.JsonObject(), metrics=registry_pb.JsonObject(),
            started_at="2026-01-01T00:00:00", finished_at="2026-01-01T00:00:01", status="succeeded"),
            grpc.StatusCode.NOT_FOUND),
        "Registry/CaptureState": (registry_pb.CaptureStateRequest(), OK),
        "Registry/CaptureSummary": (registry_pb.CaptureRequest(adapter="demo"), OK),
        "Registry/CaptureRecord": (registry_pb.CaptureRecordRequest(), OK),
        "Registry/CaptureSet": (registry_pb.CaptureSetRequest(adapter="no-such-adapter", config=registry_pb.CaptureConfig(
            sample=1, retain_s=3600, max_bytes=2**20)), grpc.StatusCode.NOT_FOUND),
        "Registry/CaptureOff": (registry_pb.CaptureRequest(adapter="demo"), OK),
        "Registry/CaptureClear": (registry_pb.CaptureRequest(adapter="demo"), OK),
        "Registry/CaptureExpire": (registry_pb.CaptureExpireRequest(), OK),
        "Registry/CaptureRows": (registry_pb.CaptureRowsRequest(adapter="demo"), OK),
        "Registry/RecordEvaluation": (registry_pb.RecordEvaluationRequest(
            ref="demo:99", manifest_digest="sha256:ab", name="heldout", split="val", metrics=registry_pb.JsonObject()),
            grpc.StatusCode.NOT_FOUND),
        # This server was built without the trainer's job checks (JobHooks): a permitted submission is refused after
        # the role check, and there are no jobs to find.
        "Jobs/SubmitJob": (lambda: iter([jobs_pb.SubmitJobRequest(submission=jobs_pb.JobSubmission())]),
                           grpc.StatusCode.UNIMPLEMENTED),
        "Jobs/ListJobs": (jobs_pb.ListJobsRequest(), OK),
        "Jobs/GetJob": (jobs_pb.JobRequest(job_id="ftjob-none"), grpc.StatusCode.NOT_FOUND),
        "Jobs/JobEvents": (jobs_pb.JobEventsRequest(job_id="ftjob-none"), grpc.StatusCode.NOT_FOUND),
        "Jobs/ListCheckpoints": (jobs_pb.JobRequest(job_id="ftjob-none"), grpc.StatusCode.NOT_FOUND),
        "Jobs/CancelJob": (jobs_pb.JobRequest(job_id="ftjob-none"), grpc.StatusCode.NOT_FOUND),
        "Jobs/ResumeJob": (jobs_pb.JobRequest(job_id="ftjob-none"), grpc.StatusCode.NOT_FOUND),
        "Jobs/PushCheckpoint": (jobs_pb.PushCheckpointRequest(job_id="ftjob-none", step=1), grpc.StatusCode.NOT_FOUND),
        "JobWorkers/RegisterWorker": (jobs_pb.WorkerInfo(id="auth-box", host="box", pid=1, slots=1), OK),
        "JobWorkers/UnregisterWorker": (jobs_pb.WorkerRequest(worker_id="auth-box"), OK),
        "JobWorkers/ClaimJob": (jobs_pb.ClaimJobRequest(worker_id="auth-box", lease_s=30), OK),  # nothing queued
        "JobWorkers/RenewLease": (jobs_pb.RenewLeaseRequest(job_id="ftjob-none", worker_id="auth-box", lease_s=30), OK),
        "JobWorkers/JobsToStop": (jobs_pb.JobsToStopRequest(worker_id="auth-box", job_ids=["ftjob-none"]), OK),
        "JobWorkers/FinishJob": (jobs_pb.FinishJobRequest(job_id="ftjob-none", worker_id="auth-box", state="failed"), OK),
        "JobWorkers/AddJobEvent": (jobs_pb.AddJobEventRequest(job_id="ftjob-none", level="info", type="message"),
                                   grpc.StatusCode.NOT_FOUND),
        "JobWorkers/ReportProgress": (jobs_pb.ReportProgressRequest(job_id="ftjob-none"), grpc.StatusCode.NOT_FOUND),
        "JobWorkers/RecordCheckpoint": (jobs_pb.RecordCheckpointRequest(job_id="ftjob-none"), grpc.StatusCode.NOT_FOUND),
        "JobWorkers/SetJobRun": (jobs_pb.SetJobRunRequest(job_id="ftjob-none", run_id="r"), grpc.StatusCode.NOT_FOUND),
        "JobWorkers/DownloadJobData": (jobs_pb.JobDataRequest(job_id="ftjob-none", worker_id="auth-box", digest="0" * 64),
                                       grpc.StatusCode.NOT_FOUND),
    }


def _call(channel, method: str, request, token: str | None) -> grpc.StatusCode:
    service, name = method.split("/")
    stub = {"Inference": pb_grpc.InferenceStub, "Registry": registry_pb_grpc.RegistryStub,
            "Jobs": jobs_pb_grpc.JobsStub, "JobWorkers": jobs_pb_grpc.JobWorkersStub}[service](channel)
    metadata = [("authorization", f"Bearer {token}")] if token is not None else None
    try:
        reply = getattr(stub, name)(request() if callable(request) else request, metadata=metadata, timeout=60)
        if hasattr(reply, "__iter__") and not hasattr(reply, "ListFields"):
            list(reply)
    except grpc.RpcError as exc:
        return exc.code()
    return OK


def test_the_role_table_covers_every_rpc_of_every_service():
    methods = {f"/{s.full_name}/{m.name}" for module in (pb, registry_pb, jobs_pb)
               for s in module.DESCRIPTOR.services_by_name.values() for m in s.methods}
    assert methods == set(ROLE_FOR_METHOD)
    assert set(ROLE_FOR_METHOD.values()) <= set(ROLES)


def test_every_rpc_with_no_token_a_wrong_token_and_each_role(secured):
    requests = _requests(secured["adapter"])
    assert {f"/loradock.v1.{m}" for m in requests} == set(ROLE_FOR_METHOD)
    callers = {"no token": None, "wrong token": "ldk_not-a-real-token", "empty bearer": "", **secured["tokens"]}
    got, want = {}, {}
    for method, (request, allowed) in requests.items():
        role = ROLE_FOR_METHOD[f"/loradock.v1.{method}"]
        for caller, token in callers.items():
            if caller in ("no token", "wrong token", "empty bearer"):
                want[method, caller] = UNAUTH
            elif caller in ("admin", "env-admin") or caller == role:
                want[method, caller] = allowed
            else:
                want[method, caller] = DENIED
            got[method, caller] = _call(secured["channel"], method, request, token)
    wrong = {k: (got[k].name, want[k].name) for k in want if got[k] != want[k]}
    assert not wrong, wrong
    assert len(got) == len(ROLE_FOR_METHOD) * len(callers) == 60 * 10


def test_health_and_reflection_need_no_token(secured):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    reply = health_pb2_grpc.HealthStub(secured["channel"]).Check(health_pb2.HealthCheckRequest(service="loradock.v1.Registry"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_cli_errors_name_the_problem_with_their_own_exit_codes(secured, capsys, tmp_path):
    url, tokens = secured["url"], secured["tokens"]
    code, _, err = run_reg(capsys, "--registry", url, "ls")
    assert code == 10 and "no token: pass --token or set LORADOCK_TOKEN" in err
    code, _, err = run_reg(capsys, "--registry", url, "--token", "ldk_wrong", "ls")
    assert code == 10 and "invalid token" in err and "ldk_wrong" not in err
    code, _, err = run_reg(capsys, "--registry", url, "--token", tokens["read"], "push", str(secured["adapter"]), "--name", "x")
    assert code == 11 and "token 'only-read' has role(s) read; HasBlobs needs 'push'" in err
    code, _, err = run_reg(capsys, "--registry", url, "--token", tokens["push"], "rm", "demo:1")
    assert code == 11 and "needs 'admin'" in err
    os.environ["LORADOCK_TOKEN"] = tokens["read"]
    try:
        code, out, _ = run_reg(capsys, "--registry", url, "ls", "--json")
    finally:
        del os.environ["LORADOCK_TOKEN"]
    assert code == 0 and json.loads(out)[0]["name"] == "demo"
    code, _, err = run_reg(capsys, "generate", "hi", "--target", f"127.0.0.1:{secured['port']}")
    assert code == 10 and "UNAUTHENTICATED" in err
    code, out, _ = run_reg(capsys, "--token", tokens["infer"], "generate", "hi", "--target", f"127.0.0.1:{secured['port']}",
                           "--max-new-tokens", "2", "--json")
    assert code == 0 and json.loads(out)["completion_tokens"] >= 1
    for line in secured["log"]:  # denials are logged by token name, never with a token
        assert not any(t in line for t in secured["tokens"].values()), line
    assert any("denied" in line and "only-read" in line for line in secured["log"])


def test_writes_are_audited_with_the_token_name(secured, capsys, make_adapter):
    url, tokens = secured["url"], secured["tokens"]
    with RemoteRegistry(url, token=tokens["push"]) as pusher:
        version = pusher.push(make_adapter("lora", seed=7), "audited", message="by ci").version
        pusher.set_alias("audited", "prod", version.number)
        pusher.rollouts.promote("audited", version.number, reason="all in")
        pusher.rollouts.clear("audited", reason="done")
        with pytest.raises(PermissionDenied):
            pusher.remove_version("audited:1", force=True)
    with RemoteRegistry(url, token=tokens["admin"]) as admin:
        admin.remove_version("audited:1", force=True)
        entries = admin.audit_entries()
    mine = [(e["token"], e["action"], e["target"]) for e in entries if e["target"].startswith("audited")]
    assert mine == [
        ("only-push", "push", "audited:1"), ("only-push", "alias.set", "audited@prod"),
        ("only-push", "rollout.promote", "audited"), ("only-push", "rollout.clear", "audited"),
        ("only-admin", "rm", "audited:1"),
    ]
    assert all(e["peer"].startswith("ipv4:127.0.0.1") for e in entries)
    v = Registry(secured["home"]).list_versions("audited", include_deleted=True)[0]
    assert v.creator == "only-push"  # the version records who pushed it: the token's name
    assert Registry(secured["home"]).alias_history("audited")[0].actor == "only-push"
    code, out, _ = run_reg(capsys, "--registry", url, "--token", tokens["admin"], "audit")
    assert code == 0 and "only-push" in out and "rollout.promote" in out
    code, out, _ = run_reg(capsys, "audit", "--json", "--home", str(secured["home"]))
    assert code == 0 and len(json.loads(out)) == len(entries)
    code, _, err = run_reg(capsys, "--registry", url, "--token", tokens["read"], "audit")
    assert code == 11
    text = (secured["home"] / "registry.db").read_bytes()
    assert not any(t.encode() in text for t in tokens.values())


def test_token_create_stores_only_a_hash_and_prints_the_token_once(tmp_path, capsys):
    path = tmp_path / "tokens.yaml"
    code, out, err = run_reg(capsys, "token", "create", "ci-pusher", "--roles", "read,push", "--file", str(path))
    token = out.strip()
    assert code == 0 and token.startswith("ldk_") and len(token) > 40 and "shown only now" in err
    text = path.read_text()
    assert token not in text and hashlib.sha256(token.encode()).hexdigest() in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    [entry] = load_tokens_file(path)
    assert (entry.name, entry.roles) == ("ci-pusher", frozenset({"read", "push"}))
    second = create_token("admin", "admin", path)
    assert [e.name for e in load_tokens_file(path)] == ["ci-pusher", "admin"]
    store = TokenStore(path)
    assert store.identify(token).name == "ci-pusher" and store.identify(second).name == "admin"
    assert store.identify(token + "x") is None and store.identify("") is None
    with pytest.raises(Conflict, match="already has a token named 'admin'"):
        create_token("admin", "read", path)
    with pytest.raises(InvalidInput, match="'read,write'"):
        create_token("bad", "read,write", path)
    code, _, err = run_reg(capsys, "token", "create", "x", "--roles", "root", "--file", str(path))
    assert code == 2 and "use one or more of infer, read, push, train, worker, admin" in err
    code, out, _ = run_reg(capsys, "token", "ls", "--file", str(path), "--json")
    assert json.loads(out) == [{"name": "ci-pusher", "roles": ["push", "read"]}, {"name": "admin", "roles": ["admin"]}]


def test_bad_tokens_files_are_refused_with_the_entry_named(tmp_path):
    path = tmp_path / "tokens.yaml"
    path.write_text("tokens:\n  - name: a\n    token: plain-text-token\n    roles: [read]\n")
    with pytest.raises(InvalidInput, match=r"tokens\[0\].*hashes, never tokens"):
        load_tokens_file(path)
    path.write_text("tokens:\n  - name: a\n    sha256: abc\n    roles: [read]\n")
    with pytest.raises(InvalidInput, match=r"tokens\[0\] \(a\): sha256 must be 64"):
        load_tokens_file(path)
    with pytest.raises(InvalidInput, match="no such file"):
        load_tokens_file(tmp_path / "missing.yaml")


def test_a_token_added_while_serving_works_without_a_restart(tmp_path, tiny_base_dir):
    home = tmp_path / "home"
    registry_with_base(home, tiny_base_dir, TINY_BASE).close()
    path = tmp_path / "tokens.yaml"
    create_token("first", "read", path)
    server, url, _ = start_registry(home, auth_tokens=str(path))
    try:
        late = create_token("late", "read", path)
        with RemoteRegistry(url, token=late) as remote:
            assert remote.list_adapters() == []
        with RemoteRegistry(url, token="nope") as remote, pytest.raises(Unauthenticated):
            remote.list_adapters()
    finally:
        server.stop(0)


def test_without_auth_the_server_listens_on_localhost_only(tmp_path, tiny_base_dir):
    from server.errors import BadRequest

    home = tmp_path / "home"
    with pytest.raises(BadRequest, match="--insecure-listen-all"):
        start_registry(home, host="0.0.0.0")
    server, url, _ = start_registry(home, host="0.0.0.0", insecure_listen_all=True)
    server.stop(0)
    path = tmp_path / "tokens.yaml"
    create_token("a", "read", path)
    server, url, _ = start_registry(home, host="0.0.0.0", auth_tokens=str(path))
    server.stop(0)
    with pytest.raises(BadRequest, match="--tls-cert and --tls-key go together"):
        start_registry(home, tls_cert=str(path))


def test_token_rm_removes_one_entry_atomically_and_the_server_stops_accepting_it(tmp_path, capsys):
    path = tmp_path / "tokens.yaml"
    keep, gone = create_token("keep", "read", path), create_token("gone", "push", path)
    store = TokenStore(path)
    assert store.identify(gone).name == "gone"
    code, out, err = run_reg(capsys, "token", "rm", "gone", "--file", str(path))
    assert code == 0 and "removed token 'gone' (push)" in out, err
    assert [e.name for e in load_tokens_file(path)] == ["keep"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokens.yaml"]  # no temp file left beside it
    assert store.identify(gone) is None and store.identify(keep).name == "keep"  # re-read on change

    before = path.read_bytes()
    code, out, err = run_reg(capsys, "token", "rm", "nobody", "--file", str(path))
    assert code == 3 and err == f"error: {path} has no token named 'nobody' (its tokens: keep); see `reg token ls`\n"
    assert path.read_bytes() == before and out == ""
    code, _, err = run_reg(capsys, "token", "rm", "keep", "--file", str(tmp_path / "missing.yaml"))
    assert code == 3 and "no tokens file" in err and not (tmp_path / "missing.yaml").exists()
