"""Blobs in S3-compatible object storage (`--blob-store s3://...`), against a real S3-protocol server process
(moto's standalone server on 127.0.0.1): round trip, dedup, corruption caught on pull and by verify, a push
killed midway, refused credentials, a remote registry handing out pre-signed URLs, and an inference server
loading its adapters from the bucket."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid

import pytest
from conftest import TINY_BASE
from forward_gate import wait_until
from remote_helpers import REG, ROOT, big_adapter, start_registry
from s3_server import start_s3_server

from registry import Registry
from registry.errors import Conflict, IntegrityError, InvalidInput
from registry.remote.client import RemoteRegistry
from registry.s3_blobs import StorageRefused


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = start_s3_server(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


@pytest.fixture
def bucket(s3, monkeypatch):
    """A fresh, versioned bucket (every PUT makes an object version, so a test can count uploads) and the env for it."""
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("LORADOCK_BLOB_STORE", raising=False)
    name = f"loradock-{uuid.uuid4().hex[:12]}"
    s3.client().create_bucket(Bucket=name)
    s3.client().put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


def objects(s3, bucket: str) -> dict[str, int]:
    """key -> how many times it was PUT (its object versions)."""
    listing = s3.client().list_object_versions(Bucket=bucket).get("Versions", [])
    counts: dict[str, int] = {}
    for version in listing:
        counts[version["Key"]] = counts.get(version["Key"], 0) + 1
    return counts


def s3_registry(home, bucket, tiny_base_dir, prefix="team-a") -> Registry:
    reg = Registry(home, blob_store=f"s3://{bucket}/{prefix}")
    reg.add_base(str(tiny_base_dir), TINY_BASE)
    return reg


def test_push_and_pull_round_trip_through_the_bucket(s3, bucket, tmp_path, tiny_base_dir, make_adapter):
    reg = s3_registry(tmp_path / "home", bucket, tiny_base_dir)
    src = make_adapter("lora")
    version = reg.push(src, "support").version
    stored = objects(s3, bucket)
    # keyed by sha256 exactly as on disk, under the prefix; nothing under the home's local blob directory
    assert sorted(stored) == sorted(f"team-a/sha256/{f.sha256[:2]}/{f.sha256}" for f in version.files)
    assert not any((tmp_path / "home" / "blobs" / "sha256").glob("*/*"))
    _, out = reg.pull("support:1", tmp_path / "out")
    for f in version.files:
        assert (out / f.path).read_bytes() == (src / f.path).read_bytes()
    assert reg.verify().problems == []
    reg.close()
    # the home recorded its store: opened again with no setting it uses the bucket, and another store is refused
    again = Registry(tmp_path / "home")
    assert again.blobs.location == f"s3://{bucket}/team-a"
    again.pull("support", tmp_path / "again")
    with pytest.raises(Conflict, match=f"keeps its blobs in s3://{bucket}/team-a, not s3://{bucket}/other"):
        Registry(tmp_path / "home", blob_store=f"s3://{bucket}/other").blobs
    with pytest.raises(InvalidInput, match="not an S3 bucket name"):
        Registry(tmp_path / "elsewhere", blob_store="s3://Bad_Bucket!").blobs


def test_a_home_with_local_blobs_is_not_moved_to_a_bucket(bucket, registry, make_adapter):
    registry.push(make_adapter("lora"), "local-one")
    with pytest.raises(Conflict, match="already keeps blobs on local disk"):
        Registry(registry.home, blob_store=f"s3://{bucket}").blobs


def test_pushing_the_same_bytes_again_uploads_nothing(s3, bucket, tmp_path, tiny_base_dir, make_adapter):
    reg = s3_registry(tmp_path / "home", bucket, tiny_base_dir)
    src = make_adapter("lora")
    reg.push(src, "first")
    before = objects(s3, bucket)
    assert set(before.values()) == {1}
    reg.push(src, "second")  # a new adapter, the same files
    reg.push(make_adapter("lora", seed=1), "third")  # new weights: only they are new
    after = objects(s3, bucket)
    assert {key: after[key] for key in before} == before  # no object was PUT twice
    assert len(after) == len(before) + 1 and set(after.values()) == {1}


def test_a_corrupted_object_is_caught_on_pull_and_by_verify(s3, bucket, tmp_path, tiny_base_dir, make_adapter):
    reg = s3_registry(tmp_path / "home", bucket, tiny_base_dir)
    version = reg.push(make_adapter("lora"), "support").version
    weights = next(f for f in version.files if f.path == "adapter_model.safetensors")
    key = f"team-a/sha256/{weights.sha256[:2]}/{weights.sha256}"
    data = bytearray(s3.client().get_object(Bucket=bucket, Key=key)["Body"].read())
    data[-3] ^= 0xFF  # same size, different bytes: only the hash can tell
    s3.client().put_object(Bucket=bucket, Key=key, Body=bytes(data))
    with pytest.raises(IntegrityError, match=f"do not match sha256:{weights.sha256}"):
        reg.pull("support:1", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    problems = reg.verify().problems
    assert [(p.path, p.problem.split()[0]) for p in problems] == [("adapter_model.safetensors", "content")]
    s3.client().delete_object(Bucket=bucket, Key=key)
    for stored in s3.client().list_object_versions(Bucket=bucket, Prefix=key).get("Versions", []):
        s3.client().delete_object(Bucket=bucket, Key=key, VersionId=stored["VersionId"])
    assert [p.problem for p in reg.verify().problems] == ["missing from the blob store"]


def test_a_push_killed_midway_leaves_no_version_and_gc_cleans_up(s3, bucket, tmp_path, tiny_base_dir, make_adapter):
    home = tmp_path / "home"
    reg = s3_registry(home, bucket, tiny_base_dir)
    kept = reg.push(make_adapter("lora"), "kept").version  # so gc sees a registry with records, and keeps these
    big = big_adapter(make_adapter("lora"), tmp_path / "big", rank=16384)  # a 32 MiB weights file: a multipart upload
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LORADOCK_S3_MULTIPART_MB": "8"}
    client = s3.client()
    uploads = lambda: client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])  # noqa: E731
    push = subprocess.Popen([*REG, "push", str(big), "--name", "big", "--home", str(home)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: uploads() or push.poll() is not None, what="the push to begin its multipart upload")
        push.send_signal(signal.SIGKILL)
    finally:
        out, err = push.communicate()
    assert push.returncode == -signal.SIGKILL, f"the push ended by itself before it was killed: {out}{err}"
    assert len(uploads()) == 1
    reg = Registry(home)
    assert [a.name for a in reg.list_adapters()] == ["kept"]  # no version of `big`, not even a half one
    report = reg.gc(grace_s=0)
    assert uploads() == []  # the unfinished multipart upload was aborted
    live = {f"team-a/sha256/{f.sha256[:2]}/{f.sha256}" for f in kept.files}
    current = {v["Key"] for v in client.list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert current == live, report  # what the killed push uploaded completely is gone too
    assert reg.verify().problems == []


def test_refused_credentials_are_one_clear_line_and_change_nothing(tmp_path, tiny_base_dir, make_adapter):
    strict = start_s3_server(tmp_path / "strict", check_credentials=True)
    try:
        home = tmp_path / "home"
        Registry(home).add_base(str(tiny_base_dir), TINY_BASE)
        env = {**os.environ, **strict.env, "PYTHONPATH": str(ROOT)}
        env.pop("LORADOCK_BLOB_STORE", None)
        done = subprocess.run([*REG, "--blob-store", "s3://any-bucket/x", "push", str(make_adapter("lora")), "--name", "support",
                               "--home", str(home)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    finally:
        strict.stop()
    assert done.returncode == StorageRefused.exit_code, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "refused the registry's credentials (InvalidAccessKeyId" in lines[0], done.stderr
    reg = Registry(home)
    assert reg.list_adapters() == []
    assert reg.conn.execute("SELECT COUNT(*) FROM settings").fetchone()[0] == 0  # the home did not record the store


def test_a_remote_registry_on_s3_hands_out_presigned_urls(s3, bucket, tmp_path, tiny_base_dir, make_adapter,
                                                           monkeypatch):
    monkeypatch.setenv("LORADOCK_BLOB_STORE", f"s3://{bucket}/shared")
    home = tmp_path / "server-home"
    Registry(home).add_base(str(tiny_base_dir), TINY_BASE)
    sent: list[str] = []
    server, url, _ = start_registry(home, on_sent=lambda digest, n: sent.append(digest))
    try:
        src = make_adapter("lora")
        with RemoteRegistry(url, home=tmp_path / "client-home") as remote:
            version = remote.push(src, "support").version
            assert len(objects(s3, bucket)) == len(version.files)  # the server put the uploads in the bucket
            _, out = remote.pull("support", tmp_path / "out")
            assert remote.last_pull["from_object_store"] == len(version.files)
            assert sent == []  # no adapter byte flowed through the registry server
            for f in version.files:
                assert (out / f.path).read_bytes() == (src / f.path).read_bytes()
            # the registry's own stream still serves a client that cannot reach the bucket
            weights = next(f for f in version.files if f.path == "adapter_model.safetensors")
            remote.fetch_blob(weights.sha256, weights.size, tmp_path / "streamed", "weights")
            assert (tmp_path / "streamed").read_bytes() == (src / weights.path).read_bytes() and sent
    finally:
        server.stop(0)


def test_an_inference_server_loads_adapters_from_the_bucket(bucket, tmp_path, tiny_base_dir, make_adapter):
    from server.app import create_server, shutdown
    from server.client import LoradockClient
    from server.options import ServerOptions

    reg = s3_registry(tmp_path / "home", bucket, tiny_base_dir)
    reg.push(make_adapter("lora"), "support")
    server, port, service = create_server(ServerOptions(base=TINY_BASE, quant="none", port=0), reg)
    try:
        with LoradockClient(f"127.0.0.1:{port}") as client:
            result = client.generate("hello", adapter="support", max_new_tokens=4)
        assert result.adapter_version == "support:1" and result.completion_tokens > 0
    finally:
        shutdown(server, service, 0)
