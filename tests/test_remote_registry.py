"""The registry over gRPC: real servers on real ports, real client processes, nothing mocked."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import grpc
import pytest
from conftest import TINY_BASE
from remote_helpers import big_adapter, reg_process, registry_with_base, self_signed_cert, start_registry

pytestmark = pytest.mark.integration  # real `reg` client and server processes

from cli.main import main
from registry import Registry
from registry.errors import BlobsMissing, Conflict, IntegrityError, NotFound, TooLarge, Unavailable
from registry.remote.client import RemoteRegistry, parse_registry_url
from registry.remote.rpc import pb, pb_grpc


@pytest.fixture
def served(tmp_path, tiny_base_dir):
    """A registry home with the tiny base, served by a Registry-only server; yields (home, url, servicer)."""
    home = tmp_path / "served-home"
    registry_with_base(home, tiny_base_dir, TINY_BASE).close()
    server, url, servicer = start_registry(home)
    yield home, url, servicer
    server.stop(0)


def run_reg(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_remote_push_and_pull_round_trip_equals_local(served, registry, make_adapter, tmp_path):
    home, url, servicer = served
    src = make_adapter("lora", seed=1)
    local = registry.push(src, "demo", message="first").version
    with RemoteRegistry(url) as remote:
        pushed = remote.push(src, "demo", message="first")
        assert pushed.created and pushed.version.ref == "demo:1"
        assert pushed.version.manifest_digest == local.manifest_digest
        assert [(f.path, f.size, f.sha256) for f in pushed.version.files] == [(f.path, f.size, f.sha256) for f in local.files]
        assert (pushed.version.peft_type, pushed.version.rank, pushed.version.base_digest) == (
            local.peft_type, local.rank, local.base_digest)
        assert remote.last_push["bytes_sent"] == sum(f.size for f in local.files)

        again = remote.push(src, "demo")  # identical content: nothing sent, the existing version returned
        assert not again.created and again.version.ref == "demo:1" and remote.last_push["bytes_sent"] == 0
        second = remote.push(make_adapter("lora", seed=2), "demo").version
        third = remote.push(make_adapter("lora", seed=3), "demo", parent=1).version  # made from demo:1, not demo:2
        assert (second.parent, third.number, third.parent) == (1, 3, 1)
        with pytest.raises(NotFound, match="parent demo:7: no live version"):
            remote.push(make_adapter("lora", seed=4), "demo", parent=7)

        version, out = remote.pull("demo:1", tmp_path / "pulled")
        assert version.ref == "demo:1"
        assert {p.name: sha(p) for p in out.iterdir()} == {p.name: sha(p) for p in src.iterdir()}
        with pytest.raises(Conflict, match="not empty"):
            remote.pull("demo:1", out)
        with pytest.raises(NotFound, match="no adapter named 'nope'"):
            remote.resolve("nope")
    assert Registry(home).resolve("demo:1").manifest_digest == local.manifest_digest


def test_every_registry_command_prints_the_same_remotely(served, make_adapter, capsys, tmp_path):
    home, url, _ = served
    code, out, err = run_reg(capsys, "--registry", url, "push", str(make_adapter("lora", seed=0)), "--name", "demo",
                             "-m", "one", "--alias", "prod")
    assert code == 0, err
    assert run_reg(capsys, "--registry", url, "push", str(make_adapter("lora-all", seed=1)), "--name", "demo")[0] == 0
    assert run_reg(capsys, "--registry", url, "push", str(make_adapter("lora", seed=2)), "--name", "other")[0] == 0
    assert run_reg(capsys, "--registry", url, "alias", "set", "demo@staging", "2")[0] == 0
    code, out, err = run_reg(capsys, "--registry", url, "rollout", "set", "demo", "--arm", "1=90", "--arm", "2=10", "--sticky",
                             "--guard", "max_error_rate=0.05", "-m", "canary")
    assert code == 0 and out == "demo: revision 1 (set): A=demo:1:90% B=demo:2:10%, sticky, guard max_error_rate=0.05,min_requests=100\n", err

    commands = [
        ["ls"], ["ls", "--json"], ["ls", "demo"], ["ls", "demo", "--json"], ["ls", "demo", "--limit", "1"],
        ["show", "demo:1"], ["show", "demo@staging", "--json"], ["diff", "demo:1", "demo:2"],
        ["diff", "demo:1", "demo:2", "--json"], ["alias", "history", "demo"], ["alias", "history", "demo", "--json"],
        ["base", "ls"], ["verify"], ["verify", "demo:1", "--json"], ["gc", "--dry-run"],
        ["show", "nope"], ["show", "demo:9"], ["show", "Bad Name"], ["rm", "demo"], ["rm", "demo@prod"],
        ["rollout", "show", "demo"], ["rollout", "show", "demo", "--json"], ["rollout", "report", "demo", "--json"],
        ["rollout", "show", "other"], ["rollout", "rollback", "other"],
    ]
    for command in commands:
        local = run_reg(capsys, *command, "--home", str(home))
        remote = run_reg(capsys, "--registry", url, *command)
        assert remote == local, command
    # writes print the same too
    assert run_reg(capsys, "--registry", url, "alias", "set", "demo@prod", "2")[1] == "demo@prod -> demo:2 (was demo:1)\n"
    assert run_reg(capsys, "--registry", url, "rollout", "promote", "demo", "2")[1] == "demo: revision 2 (promote): A=demo:2:100%, sticky\n"
    assert run_reg(capsys, "--registry", url, "rollout", "clear", "demo")[0] == 0
    assert run_reg(capsys, "--registry", url, "rm", "demo:1") == (0, "deleted demo:1\n", "")
    assert run_reg(capsys, "--registry", url, "alias", "rm", "demo@staging")[1] == "removed demo@staging (pointed at demo:2)\n"
    code, out, _ = run_reg(capsys, "--registry", url, "pull", "demo@prod", "--out", str(tmp_path / "p"))
    assert code == 0 and out.startswith("demo:2 -> ") and "digests verified" in out
    assert run_reg(capsys, "--registry", url, "ls") == run_reg(capsys, "ls", "--home", str(home))
    # commands that need the registry's own files say so
    code, _, err = run_reg(capsys, "--registry", url, "base", "add", str(tmp_path), "--name", "x")
    assert code == 2 and "local registry only" in err


def pause_halfway(digest: str, size: int):
    """(halfway, release, hook): the server calls hook(digest, bytes so far) per chunk; past half of `digest` the
    transfer is held (halfway set) until the test has killed its client and sets release."""
    halfway, release = threading.Event(), threading.Event()

    def hook(chunk_digest: str, done: int) -> None:
        if chunk_digest == digest and done >= size // 2 and not release.is_set():
            halfway.set()
            release.wait(60)

    return halfway, release, hook


def test_resume_after_the_client_is_killed_mid_push(tmp_path, tiny_base_dir, make_adapter):
    """Kill a real `reg push` halfway through the weights; the next push sends only what the server lacks."""
    home = tmp_path / "served-home"
    registry_with_base(home, tiny_base_dir, TINY_BASE).close()
    src = big_adapter(make_adapter("lora"), tmp_path / "big", rank=16384)
    weights = src / "adapter_model.safetensors"
    weights_digest, weights_size = sha(weights), weights.stat().st_size
    assert weights_size > 20 * 2**20
    halfway, release, on_chunk = pause_halfway(weights_digest, weights_size)
    server, url, servicer = start_registry(home, on_chunk=on_chunk)
    try:
        client = reg_process("--registry", url, "push", str(src), "--name", "big")
        assert halfway.wait(120), client.communicate(timeout=5)
        client.kill()
        client.wait(30)
        release.set()
        lock = servicer._upload_lock(weights_digest)  # the server has finished with the broken upload
        assert lock.acquire(timeout=30)
        lock.release()

        blobs = Registry(home).blobs
        kept = blobs.received(weights_digest)
        assert not blobs.has(weights_digest) and weights_size // 2 <= kept < weights_size
        assert kept == servicer.counters.bytes_by_digest[weights_digest]
        small = {sha(p): p.stat().st_size for p in src.iterdir() if p.name != weights.name}
        assert all(blobs.has(d) for d in small)  # the files uploaded before the kill are stored
        assert Registry(home).list_adapters() == []  # and nothing was committed

        again = reg_process("--registry", url, "push", str(src), "--name", "big")
        out, err = again.communicate(timeout=300)
        assert again.returncode == 0, err
        assert out.startswith("big:1 sha256:")
        # every byte of every blob crossed the wire exactly once over both pushes
        assert servicer.counters.bytes_by_digest[weights_digest] == weights_size
        for digest, size in small.items():
            assert servicer.counters.bytes_by_digest[digest] == size
        assert servicer.counters.completed[weights_digest] == 1
        with RemoteRegistry(url) as remote:
            _, pulled = remote.pull("big:1", tmp_path / "pulled")
        assert sha(pulled / weights.name) == weights_digest
    finally:
        release.set()
        server.stop(0)


def test_resume_after_the_client_is_killed_mid_pull(tmp_path, tiny_base_dir, make_adapter):
    """Kill a real `reg pull` halfway through the weights; the next pull asks only for the bytes it lacks."""
    home = tmp_path / "served-home"
    local = registry_with_base(home, tiny_base_dir, TINY_BASE)
    src = big_adapter(make_adapter("lora"), tmp_path / "big", rank=16384)
    local.push(src, "big")
    local.close()
    weights = src / "adapter_model.safetensors"
    weights_digest, weights_size = sha(weights), weights.stat().st_size
    halfway, release, on_sent = pause_halfway(weights_digest, weights_size)
    server, url, servicer = start_registry(home, on_sent=on_sent)
    out = tmp_path / "pulled"
    try:
        client = reg_process("--registry", url, "pull", "big:1", "--out", str(out))
        assert halfway.wait(120), client.communicate(timeout=5)
        client.kill()
        client.wait(30)
        release.set()
        assert not out.exists()  # nothing at --out until the whole version is there and verified
        [partial] = tmp_path.glob(".pulled.partial-*")
        kept = (partial / weights.name).stat().st_size
        assert 0 < kept < weights_size
        not_yet = sum(p.stat().st_size for p in src.iterdir() if p.name != weights.name and not (partial / p.name).exists())

        with RemoteRegistry(url) as remote:
            _, pulled = remote.pull("big:1", out)
            assert remote.last_pull["bytes_received"] == weights_size - kept + not_yet  # only the missing bytes crossed again
        assert sha(pulled / weights.name) == weights_digest
        assert {p.name: sha(p) for p in pulled.iterdir()} == {p.name: sha(p) for p in src.iterdir()}
        assert not partial.exists()
    finally:
        release.set()
        server.stop(0)


def test_a_corrupted_chunk_is_rejected_and_nothing_is_committed(served, make_adapter):
    home, url, servicer = served
    src = make_adapter("lora")
    files = sorted(p for p in src.iterdir())
    entries = [pb.FileEntry(path=p.name, size=p.stat().st_size, sha256=sha(p)) for p in files]
    channel = grpc.insecure_channel(url.removeprefix("grpc://"))
    stub = pb_grpc.RegistryStub(channel)

    def upload(p: Path, data: bytes, chunk: int = 4096, size: int | None = None):
        pieces = [data[i:i + chunk] for i in range(0, len(data), chunk)] or [b""]
        messages = [pb.UploadBlobRequest(digest=sha(p), size=len(data) if size is None else size, data=pieces[0])]
        messages += [pb.UploadBlobRequest(data=d) for d in pieces[1:]]
        return stub.UploadBlob(iter(messages), timeout=30)

    weights = src / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit pattern in a middle chunk
    with pytest.raises(grpc.RpcError) as exc:
        upload(weights, bytes(data))
    assert exc.value.code() == grpc.StatusCode.DATA_LOSS and "nothing was committed" in exc.value.details()
    blobs = Registry(home).blobs
    assert not blobs.has(sha(weights)) and blobs.received(sha(weights)) == 0  # the bad bytes are not kept for a resume

    with pytest.raises(grpc.RpcError) as exc:  # more bytes than declared
        upload(weights, weights.read_bytes(), size=100)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "more bytes than the declared 100" in exc.value.details()

    for p in files:
        if p != weights:
            upload(p, p.read_bytes())
    with pytest.raises(grpc.RpcError) as exc:
        stub.CommitPush(pb.CommitPushRequest(name="demo", files=entries), timeout=30)
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "adapter_model.safetensors" in exc.value.details()
    assert Registry(home).list_adapters() == []

    with RemoteRegistry(url) as remote:  # a clean push afterwards works and sends only the missing weights
        result = remote.push(src, "demo")
        assert result.version.ref == "demo:1" and remote.last_push["bytes_sent"] == weights.stat().st_size
    channel.close()


def test_limits_on_blob_and_message_size_give_clear_errors(tmp_path, tiny_base_dir, make_adapter, capsys):
    home = tmp_path / "served-home"
    registry_with_base(home, tiny_base_dir, TINY_BASE).close()
    server, url, _ = start_registry(home, max_blob_mb=0.0058)  # 6,081 bytes: the README fits, the weights do not
    try:
        src = make_adapter("lora")
        size = (src / "adapter_model.safetensors").stat().st_size
        with RemoteRegistry(url) as remote, pytest.raises(TooLarge) as exc:
            remote.push(src, "demo")
        assert f"adapter_model.safetensors is {size:,} bytes" in str(exc.value) and "6,081 bytes" in str(exc.value)
        code, _, err = run_reg(capsys, "--registry", url, "push", str(src), "--name", "demo")
        assert code == 7 and "at most 6,081 bytes" in err

        stub = pb_grpc.RegistryStub(grpc.insecure_channel(url.removeprefix("grpc://")))
        with pytest.raises(grpc.RpcError) as exc:  # a client that ignores the advertised limit
            stub.UploadBlob(iter([pb.UploadBlobRequest(digest="ab" * 32, size=10**9)]), timeout=10)
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-blob-mb" in exc.value.details()
        with pytest.raises(grpc.RpcError) as exc:  # a message beyond the server's message limit
            stub.UploadBlob(iter([pb.UploadBlobRequest(digest="ab" * 32, size=1000, data=b"x" * (17 * 2**20))]), timeout=10)
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(grpc.RpcError) as exc:
            stub.HasBlobs(pb.HasBlobsRequest(digests=["../../etc/passwd"]), timeout=10)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'../../etc/passwd'" in exc.value.details()
        with pytest.raises(grpc.RpcError) as exc:
            stub.CommitPush(pb.CommitPushRequest(name="demo", files=[pb.FileEntry(path="../x", size=1, sha256="ab" * 32)]),
                            timeout=10)
        assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "'../x'" in exc.value.details()
    finally:
        server.stop(0)


def test_eight_concurrent_remote_pushers_get_distinct_consecutive_versions(served, make_adapter, tmp_path):
    home, url, _ = served
    base = make_adapter("lora")
    dirs = []
    for i in range(8):  # same weights (one shared blob, uploaded concurrently), a different README each
        d = tmp_path / f"copy-{i}"
        d.mkdir()
        for p in base.iterdir():
            (d / p.name).write_bytes(p.read_bytes())
        (d / "README.md").write_text(f"pusher {i}\n")
        dirs.append(d)
    procs = [reg_process("--registry", url, "push", str(d), "--name", "shared", "--json") for d in dirs]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    assert sorted(r["ref"] for r in results) == [f"shared:{n}" for n in range(1, 9)]
    assert len({r["manifest_digest"] for r in results}) == 8
    reg = Registry(home)
    assert [v.number for v in reg.list_versions("shared")] == list(range(8, 0, -1))
    assert reg.verify().ok


def test_tls_round_trip_with_a_self_signed_certificate(tmp_path, tiny_base_dir, make_adapter, capsys):
    home = tmp_path / "served-home"
    registry_with_base(home, tiny_base_dir, TINY_BASE).close()
    cert, key = self_signed_cert(tmp_path)
    server, url, _ = start_registry(home, tls_cert=str(cert), tls_key=str(key))
    try:
        assert url.startswith("grpcs://localhost:")
        src = make_adapter("lora")
        with RemoteRegistry(url, tls_ca=cert) as remote:
            assert remote.push(src, "demo").version.ref == "demo:1"
            _, out = remote.pull("demo", tmp_path / "pulled")
        assert sha(out / "adapter_model.safetensors") == sha(src / "adapter_model.safetensors")
        code, out, err = run_reg(capsys, "--registry", url, "--tls-ca", str(cert), "ls", "--json")
        assert code == 0 and json.loads(out)[0]["name"] == "demo"
        plaintext = url.replace("grpcs://", "grpc://")
        with RemoteRegistry(plaintext, timeout=5) as remote, pytest.raises(Unavailable, match="unreachable"):
            remote.list_adapters()
        code, _, err = run_reg(capsys, "--registry", plaintext, "ls")
        assert code == 9 and "unreachable" in err
    finally:
        server.stop(0)


def test_registry_urls_are_checked(capsys):
    assert parse_registry_url("grpc://host:50052") == ("host:50052", False)
    assert parse_registry_url("grpcs://[::1]:7") == ("[::1]:7", True)
    for bad in ("host:50052", "http://host:1", "grpc://host", "grpc://host:1/x", "grpc://host:notaport"):
        code, _, err = run_reg(capsys, "--registry", bad, "ls")
        assert code == 2 and repr(bad) in err, (bad, err)


def test_an_inference_server_resolves_and_pulls_from_a_remote_registry(served, tmp_path, tiny_base_dir, make_adapter):
    from server.app import create_server, shutdown
    from server.client import LoradockClient
    from server.options import ServerOptions

    home, url, _ = served
    src = make_adapter("lora", seed=4)
    with RemoteRegistry(url) as pusher:
        pusher.push(src, "demo", alias="prod")
    local_home = tmp_path / "server-home"  # the server's own home: its base, its adapter cache; no adapters
    registry_with_base(local_home, tiny_base_dir, TINY_BASE).close()
    remote = RemoteRegistry(url, home=local_home)
    options = ServerOptions(base=TINY_BASE, quant="none", port=0, max_batch_size=4, max_adapters=2, default_max_new_tokens=4)
    server, port, service = create_server(options, remote)
    try:
        with LoradockClient(f"127.0.0.1:{port}", timeout=60) as client:
            assert client.generate("hello world", adapter="demo@prod").adapter_version == "demo:1"
            with RemoteRegistry(url) as pusher:
                pusher.push(make_adapter("lora", seed=5), "demo")
            assert client.generate("hello world", adapter="demo").adapter_version == "demo:2"  # a new push, no restart
            assert {a.version for a in client.list_adapters()} == {"demo:2"}
            with pytest.raises(grpc.RpcError) as exc:
                client.generate("hi", adapter="nope")
            assert exc.value.code() == grpc.StatusCode.NOT_FOUND
        assert Registry(local_home).list_adapters() == []  # nothing was pushed into the server's own home
        names = {p.name for p in (local_home / "cache" / "adapters").rglob("*.safetensors")}
        assert names == {"adapter_model.safetensors"}
    finally:
        shutdown(server, service, 0)
        remote.close()


def test_a_server_backed_by_a_remote_registry_routes_and_records_its_rollouts_there(served, tmp_path, tiny_base_dir,
                                                                                    make_adapter, capsys):
    """`reg --registry URL rollout set` reaches an inference server elsewhere; its outcomes land in that registry."""
    from server.app import create_server, shutdown
    from server.client import LoradockClient
    from server.options import ServerOptions

    home, url, _ = served
    with RemoteRegistry(url) as pusher:
        first = pusher.push(make_adapter("lora", seed=6), "canary").version.number
        second = pusher.push(make_adapter("lora", seed=7), "canary").version.number
    local_home = tmp_path / "server-home"
    registry_with_base(local_home, tiny_base_dir, TINY_BASE).close()
    remote = RemoteRegistry(url, home=local_home)
    options = ServerOptions(base=TINY_BASE, quant="none", port=0, max_batch_size=4, max_adapters=2, default_max_new_tokens=2)
    server, port, service = create_server(options, remote)
    try:
        code, _, err = run_reg(capsys, "--registry", url, "rollout", "set", "canary", "--arm", f"{first}=50",
                               "--arm", f"{second}=50", "--sticky", "-m", "remote canary")
        assert code == 0, err
        with LoradockClient(f"127.0.0.1:{port}", timeout=60) as client:
            deadline = time.monotonic() + 30
            while not client.generate("hi", adapter="canary", routing_key="k").variant:  # the worker polls twice a second
                assert time.monotonic() < deadline, "the rollout never reached the server"
                time.sleep(0.2)
            replies = [client.generate("hi", adapter="canary", routing_key=f"user-{i}") for i in range(12)]
            assert client.feedback(replies[0].request_id, label="good")
        service.rollout_worker.flush()
        served_arms = {r.request_id: (r.variant, r.adapter_version) for r in replies}
        assert {v for v, _ in served_arms.values()} == {"A", "B"}
        rows = Registry(home).conn.execute("SELECT request_id, arm, version FROM rollout_events WHERE adapter='canary'")
        recorded = {r[0]: (r[1], f"canary:{r[2]}") for r in rows}
        assert all(recorded[rid] == arm for rid, arm in served_arms.items())  # in the registry, not the server's home
        assert Registry(home).conn.execute("SELECT label FROM feedback WHERE request_id=?", (replies[0].request_id,)).fetchone()[0] == "good"
        assert Registry(local_home).conn.execute("SELECT COUNT(*) FROM rollout_events").fetchone()[0] == 0
    finally:
        shutdown(server, service, 0)
        remote.close()


def test_the_inference_server_also_serves_the_registry(tmp_path, tiny_base_dir, make_adapter):
    from server.app import create_server, shutdown
    from server.options import ServerOptions

    reg = registry_with_base(tmp_path / "home", tiny_base_dir, TINY_BASE)
    options = ServerOptions(base=TINY_BASE, quant="none", port=0, max_batch_size=2, max_adapters=2)
    server, port, service = create_server(options, reg)
    try:
        with RemoteRegistry(f"grpc://127.0.0.1:{port}") as remote:
            assert remote.push(make_adapter("lora"), "demo").version.ref == "demo:1"
            assert [a.name for a in remote.list_adapters()] == ["demo"]
        assert reg.resolve("demo").number == 1
    finally:
        shutdown(server, service, 0)


def test_gc_removes_an_abandoned_upload_after_its_grace_period(served, make_adapter):
    home, url, _ = served
    src = make_adapter("lora")
    weights = src / "adapter_model.safetensors"
    stub = pb_grpc.RegistryStub(grpc.insecure_channel(url.removeprefix("grpc://")))
    data = weights.read_bytes()
    with pytest.raises(grpc.RpcError) as exc:  # a stream that ends early keeps its bytes for a resume
        stub.UploadBlob(iter([pb.UploadBlobRequest(digest=sha(weights), size=len(data), data=data[:1000])]), timeout=10)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "resume" in exc.value.details()
    state = stub.HasBlobs(pb.HasBlobsRequest(digests=[sha(weights)]), timeout=10).blobs[0]
    assert (state.present, state.received) == (False, 1000)
    with pytest.raises(grpc.RpcError) as exc:  # a resume from the wrong offset is refused
        stub.UploadBlob(iter([pb.UploadBlobRequest(digest=sha(weights), size=len(data), offset=10, data=data[10:])]),
                        timeout=10)
    assert exc.value.code() == grpc.StatusCode.ABORTED
    with RemoteRegistry(url) as remote:
        assert remote.gc(grace_s=3600).temp_removed == 0
        time.sleep(0.05)
        assert remote.gc(grace_s=0).temp_removed == 1
    assert Registry(home).blobs.received(sha(weights)) == 0


def test_remote_errors_keep_their_class(served):
    _, url, _ = served
    with RemoteRegistry(url) as remote:
        with pytest.raises(NotFound):
            remote.describe("nope:1")
        with pytest.raises(BlobsMissing):
            remote._call("CommitPush", pb.CommitPushRequest(
                name="demo", files=[pb.FileEntry(path="adapter_config.json", size=1, sha256="cd" * 32)]))
    assert issubclass(IntegrityError, Exception)
