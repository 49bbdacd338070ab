"""OpenAI's files and fine-tuning API on the HTTP front: the real openai client against a real server on the tiny base.

Uploads are checked by the trainer's own line-by-line parser; a job body maps onto a training config, and what the
server cannot honour is a 400 naming the field. The integration test runs a job to the end with a real `reg worker`
process and serves the version it made through the completions API by the name the job reports.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
from conftest import TINY_BASE
from test_http_api import call, openai_client

from registry import Registry
from server.app import create_server, shutdown
from server.http.protocol import DEFAULT_LEARNING_RATE
from server.http.serving_fine_tuning import MAX_UPLOAD_BYTES
from server.jobs_service import JobHooks, JobsService
from server.options import ServerOptions
from server.tokens import create_token
from trainer.config import TrainConfig
from trainer.jobs.submit import check_dataset, submit

ROOT = Path(__file__).resolve().parents[1]
TOPICS = ["the sea", "a red kite", "old clocks", "green tea", "mountain rain", "paper boats", "winter owls", "desert stars"]
EXAMPLES = [{"messages": [{"role": "system", "content": "Answer in one short sentence."},
                          {"role": "user", "content": f"Say something about {topic}."},
                          {"role": "assistant", "content": f"{topic.capitalize()} is number {i} on my list."}]}
            for i, topic in enumerate(TOPICS)]
TRAIN_JSONL = "".join(json.dumps(e) + "\n" for e in EXAMPLES).encode()


def start(tmp: Path, tokens_file: Path | None = None, hooks: bool = True) -> dict:
    reg = Registry(tmp / "home")
    settings = dict(base=TINY_BASE, quant="none", port=0, http_port=0, default_max_new_tokens=4)
    if tokens_file is not None:
        settings["auth_tokens"] = str(tokens_file)
    job_hooks = JobHooks(submit=submit, check_dataset=check_dataset) if hooks else None
    server, _, service = create_server(ServerOptions(**settings), reg, job_hooks=job_hooks)
    return {"reg": reg, "server": server, "service": service, "home": tmp / "home",
            "url": f"http://127.0.0.1:{server.http_port}"}


def stop(parts: dict) -> None:
    shutdown(parts["server"], parts["service"], 0)
    parts["reg"].close()


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_base_dir):
    tmp = tmp_path_factory.mktemp("http-ft")
    Registry(tmp / "home").add_base(str(tiny_base_dir), TINY_BASE)
    tokens_file = tmp / "tokens.yaml"
    tokens = {name: create_token(name, role, tokens_file) for name, role in
              [("trainer", "train,read"), ("other-trainer", "train,read"), ("reader", "read"), ("root", "admin")]}
    parts = start(tmp, tokens_file)
    parts["tokens"] = tokens
    parts["client"] = openai_client(parts, token=tokens["trainer"])
    yield parts
    stop(parts)


def post_raw(parts: dict, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """A POST with exactly these headers (a form, a declared length) and body: (status, reply body)."""
    host, port = parts["url"].removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.putrequest("POST", path)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders(body or None)
        reply = connection.getresponse()
        return reply.status, reply.read()
    finally:
        connection.close()


def upload(client: openai.OpenAI, data: bytes = TRAIN_JSONL, name: str = "train.jsonl", purpose: str = "fine-tune"):
    return client.files.create(file=(name, data), purpose=purpose)


def create_job(client: openai.OpenAI, file_id: str, **fields):
    return client.fine_tuning.jobs.create(model=TINY_BASE, training_file=file_id, **fields)


def test_an_uploaded_file_is_listed_retrieved_and_read_back_byte_for_byte(served):
    client = served["client"]
    f = upload(client)
    assert f.id.startswith("file-") and f.object == "file" and f.purpose == "fine-tune"
    assert (f.filename, f.bytes, f.status) == ("train.jsonl", len(TRAIN_JSONL), "processed")
    assert isinstance(f.created_at, int) and f.created_at > 0
    assert client.files.retrieve(f.id).model_dump() == f.model_dump()
    assert f.id in [g.id for g in client.files.list()]
    assert client.files.content(f.id).read() == TRAIN_JSONL
    assert f.model_dump()["loradock"]["lines"] == len(EXAMPLES)
    g = upload(client, name="dir/naïve data.jsonl")
    assert g.filename == "naïve data.jsonl"
    newest = client.files.list(limit=1)
    assert [h.id for h in newest.data] == [g.id] and newest.has_more
    assert client.files.list(after=g.id, limit=1).data[0].id == f.id
    assert client.files.list(order="asc").data[-1].id == g.id


def test_a_bad_upload_is_a_400_that_names_the_file_and_line_and_stores_nothing(served):
    client = served["client"]
    before = [f.id for f in client.files.list()]
    bad = TRAIN_JSONL + b'{"messages": [{"role": "user", "content": "no answer"}]}\n'
    with pytest.raises(openai.BadRequestError, match=rf"support\.jsonl:{len(EXAMPLES) + 1}: the last turn must be") as e:
        upload(client, bad, name="support.jsonl")
    assert e.value.param == "file" and "loradock-upload" not in str(e.value)
    with pytest.raises(openai.BadRequestError, match="purpose='assistants'") as e:
        upload(client, purpose="assistants")
    assert e.value.param == "purpose"
    with pytest.raises(openai.BadRequestError, match="is empty"):
        upload(client, b"\n\n", name="empty.jsonl")
    assert [f.id for f in client.files.list()] == before


def test_an_upload_that_is_not_a_form_or_too_large_is_refused(served):
    token = served["tokens"]["trainer"]
    status, _, body = call(served, "POST", "/v1/files", {"purpose": "fine-tune"}, token=token)
    assert status == 400 and b"multipart/form-data" in body
    form = (b"--b0\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
            b"--b0\r\nContent-Disposition: form-data; name=\"expires_after[anchor]\"\r\n\r\ncreated_at\r\n--b0--\r\n")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "multipart/form-data; boundary=b0"}
    status, body = post_raw(served, "/v1/files", form, {**headers, "Content-Length": str(len(form))})
    assert status == 400 and json.loads(body)["error"]["param"] == "expires_after[anchor]", body
    status, body = post_raw(served, "/v1/files", form[:-8], {**headers, "Content-Length": str(len(form) - 8)})
    assert status == 400 and b"closing boundary" in body, body
    status, body = post_raw(served, "/v1/files", b"", {**headers, "Content-Length": str(MAX_UPLOAD_BYTES + 2**20)})
    assert status == 413 and b"64 MiB" in body, body


def test_a_job_is_queued_listed_retrieved_followed_and_cancelled(served):
    client = served["client"]
    f = upload(client)
    job = create_job(client, f.id, suffix="support", hyperparameters={"n_epochs": 2}, method={"type": "supervised"},
                     seed=7, metadata={"team": "support"})
    assert job.id.startswith("ftjob-") and job.object == "fine_tuning.job" and job.status == "queued"
    assert (job.model, job.training_file, job.fine_tuned_model, job.seed) == (TINY_BASE, f.id, None, 7)
    assert job.hyperparameters.model_dump() == {"n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": 1.0}
    assert job.metadata == {"team": "support"} and job.method.type == "supervised" and job.error is None
    assert job.model_dump()["loradock"]["adapter"] == "support"
    assert client.fine_tuning.jobs.retrieve(job.id).model_dump() == job.model_dump()
    assert job.id in [j.id for j in client.fine_tuning.jobs.list()]
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"team": "support"})] == [job.id]
    assert client.fine_tuning.jobs.list(metadata={"team": "nobody"}).data == []

    events = client.fine_tuning.jobs.list_events(job.id, limit=100)
    assert events.data[0].message.startswith("queued") and events.data[-1].message == "validating files"
    assert all(e.object == "fine_tuning.job.event" and e.type in ("message", "metrics") for e in events.data)
    newest = client.fine_tuning.jobs.list_events(job.id, limit=2)
    assert newest.has_more and [e.id for e in newest.data] == [e.id for e in events.data[:2]]
    rest = client.fine_tuning.jobs.list_events(job.id, after=newest.data[-1].id, limit=100)
    assert [e.id for e in newest.data + rest.data] == [e.id for e in events.data] and not rest.has_more
    assert client.fine_tuning.jobs.checkpoints.list(job.id).data == []
    with pytest.raises(openai.BadRequestError, match="not an event id of job") as e:
        client.fine_tuning.jobs.list_events(job.id, after="ftevent-elsewhere-3")
    assert e.value.param == "after"

    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and isinstance(cancelled.finished_at, int)
    assert client.fine_tuning.jobs.list_events(job.id, limit=1).data[0].message.startswith("cancelled by")
    with pytest.raises(openai.ConflictError, match="already cancelled"):
        client.fine_tuning.jobs.cancel(job.id)


def test_a_validation_file_is_the_held_out_data(served):
    """validation_file becomes the config's `test_datasets`: frozen as its own blob, marked held out, shown back."""
    client = served["client"]
    train = upload(client)
    held_out = upload(client, TRAIN_JSONL[: TRAIN_JSONL.index(b"\n") + 1], name="valid.jsonl")
    job = create_job(client, train.id, validation_file=held_out.id, suffix="with-valid")
    assert (job.training_file, job.validation_file) == (train.id, held_out.id)
    queued = served["reg"].jobs.get(job.id)
    assert [(d["name"], d["split"], d["lines"]) for d in queued.datasets] == [
        (train.id, "train", len(EXAMPLES)), (held_out.id, "test", 1)]
    assert queued.config["test_datasets"] == [{"path": f"blob:{queued.datasets[1]['sha256']}", "type": "chat"}]
    with pytest.raises(openai.BadRequestError, match="is the training file") as e:
        create_job(client, train.id, validation_file=train.id)
    assert e.value.param == "validation_file"
    client.fine_tuning.jobs.cancel(job.id)


def test_jobs_come_in_pages_newest_first(served):
    client = served["client"]
    f = upload(client)
    first, second = (create_job(client, f.id, suffix="paged") for _ in range(2))
    page = client.fine_tuning.jobs.list(limit=1)
    assert [j.id for j in page.data] == [second.id] and page.has_more
    assert client.fine_tuning.jobs.list(after=second.id, limit=1).data[0].id == first.id
    for job in (first, second):
        client.fine_tuning.jobs.cancel(job.id)


def test_hyperparameters_suffix_seed_and_wandb_map_onto_the_training_config(served):
    assert DEFAULT_LEARNING_RATE == TrainConfig().learning_rate  # the multiplier scales the trainer's own default
    client = served["client"]
    f = upload(client)
    job = create_job(client, f.id, method={"type": "supervised", "supervised": {"hyperparameters": {
        "n_epochs": 3, "batch_size": 2, "learning_rate_multiplier": 0.5}}},
        integrations=[{"type": "wandb", "wandb": {"project": "ft", "name": "run-1", "entity": "team"}}])
    assert job.hyperparameters.model_dump() == {"n_epochs": 3, "batch_size": 2, "learning_rate_multiplier": 0.5}
    assert job.integrations[0].wandb.project == "ft"
    config = served["reg"].jobs.get(job.id).config
    assert (config["num_epochs"], config["micro_batch_size"], config["learning_rate"]) == (3, 2, DEFAULT_LEARNING_RATE / 2)
    assert config["push"]["name"] == f"{TINY_BASE}-ft" and config["datasets"][0]["type"] == "chat"
    assert (config["report_to"], config["wandb_project"], config["wandb_name"], config["wandb_entity"]) == (
        ["wandb"], "ft", "run-1", "team")
    auto = create_job(client, f.id, hyperparameters={"n_epochs": "auto", "batch_size": "auto"})
    defaults = TrainConfig()
    assert auto.hyperparameters.model_dump() == {"n_epochs": int(defaults.num_epochs),
                                                 "batch_size": defaults.micro_batch_size, "learning_rate_multiplier": 1.0}
    assert auto.seed == defaults.seed
    for j in (job, auto):
        client.fine_tuning.jobs.cancel(j.id)


@pytest.mark.parametrize("fields, error, param", [
    (dict(method={"type": "dpo"}), openai.BadRequestError, "method.type"),
    (dict(method={"type": "supervised", "dpo": {}}), openai.BadRequestError, "method.dpo"),
    (dict(hyperparameters={"n_epochs": 2, "warmup_steps": 3}), openai.BadRequestError, "hyperparameters.warmup_steps"),
    (dict(hyperparameters={"n_epochs": 0}), openai.BadRequestError, "hyperparameters.n_epochs"),
    (dict(method={"type": "supervised", "supervised": {"hyperparameters": {"batch_size": "big"}}}), openai.BadRequestError,
     "method.supervised.hyperparameters.batch_size"),
    (dict(hyperparameters={"learning_rate_multiplier": -1}), openai.BadRequestError,
     "hyperparameters.learning_rate_multiplier"),
    (dict(hyperparameters={"n_epochs": 1}, method={"type": "supervised", "supervised": {"hyperparameters": {}}}),
     openai.BadRequestError, "hyperparameters"),
    (dict(validation_file="file-x"), openai.NotFoundError, "validation_file"),
    (dict(extra_body={"priority": 3}), openai.BadRequestError, "priority"),
    (dict(integrations=[{"type": "mlflow", "mlflow": {}}]), openai.BadRequestError, "integrations.0.mlflow"),
    (dict(integrations=[{"type": "comet"}]), openai.BadRequestError, "integrations[0].type"),
    (dict(integrations=[{"type": "wandb", "wandb": {"project": "p", "tags": ["x"]}}]), openai.BadRequestError,
     "integrations[0].wandb.tags"),
    (dict(suffix="Support Bot"), openai.BadRequestError, "suffix"),
    (dict(seed=-1), openai.BadRequestError, "seed"),
    (dict(metadata={f"k{i}": "v" for i in range(17)}), openai.BadRequestError, "metadata"),
    (dict(model="no-such-base"), openai.NotFoundError, "model"),
    (dict(training_file="file-nope"), openai.NotFoundError, "training_file"),
])
def test_a_field_the_server_cannot_honour_is_refused_by_name(served, fields, error, param):
    client = served["client"]
    f = upload(client)
    before = len(served["reg"].jobs.list(limit=None))
    with pytest.raises(error) as e:
        client.fine_tuning.jobs.create(**{"model": TINY_BASE, "training_file": f.id, **fields})
    assert e.value.param == param and param.split(".")[0].split("[")[0] in str(e.value), str(e.value)
    assert len(served["reg"].jobs.list(limit=None)) == before


def test_roles_and_ownership_come_from_the_callers_token(served):
    tokens, f = served["tokens"], upload(served["client"])
    reader, other = openai_client(served, token=tokens["reader"]), openai_client(served, token=tokens["other-trainer"])
    with pytest.raises(openai.PermissionDeniedError, match="needs 'train'"):
        upload(reader)
    with pytest.raises(openai.PermissionDeniedError, match="needs 'train'"):
        create_job(reader, f.id)
    assert f.id in [g.id for g in reader.files.list()]
    for method, path in [("POST", "/v1/files"), ("GET", "/v1/files"), ("POST", "/v1/fine_tuning/jobs"),
                         ("GET", "/v1/fine_tuning/jobs"), ("GET", f"/v1/files/{f.id}/content")]:
        assert call(served, method, path, None)[0] == 401, (method, path)
    job = create_job(served["client"], f.id)
    assert job.model_dump()["loradock"]["submitter"] == "trainer"
    assert reader.fine_tuning.jobs.retrieve(job.id).id == job.id
    with pytest.raises(openai.PermissionDeniedError, match="submitted by 'trainer'"):
        other.fine_tuning.jobs.cancel(job.id)
    assert openai_client(served, token=tokens["root"]).fine_tuning.jobs.cancel(job.id).status == "cancelled"
    assert f.model_dump()["loradock"]["owner"] == "trainer"


def test_a_server_without_the_trainers_checks_lists_but_takes_no_jobs(tmp_path, served):
    from server.http.front import HttpFront, bind_http

    options = ServerOptions(base=TINY_BASE, quant="none", port=0, http_port=0)
    front = HttpFront(served["service"], options, None, bind_http(options), jobs=JobsService(served["home"], None)).start()
    bare = {"url": f"http://127.0.0.1:{front.port}"}
    try:
        client = openai_client(bare)
        assert client.files.list().data
        with pytest.raises(openai.APIStatusError, match="without the trainer's checks") as e:
            upload(client)
        assert e.value.status_code == 501
        nothing = HttpFront(served["service"], options, None, bind_http(options)).start()
        try:
            status, _, body = call({"url": f"http://127.0.0.1:{nothing.port}"}, "GET", "/v1/fine_tuning/jobs")
            assert status == 501 and b"no fine-tuning API" in body
        finally:
            nothing.stop()
    finally:
        front.stop()


def wait_for_end(client: openai.OpenAI, job_id: str, worker: subprocess.Popen, backstop_s: float = 840.0):
    """The job once it has ended; polls until then. `backstop_s` only catches a hung worker, it measures nothing."""
    deadline = time.monotonic() + backstop_s
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            return job
        assert worker.poll() is None, f"the worker exited ({worker.returncode}) while job {job_id} was {job.status}"
        assert time.monotonic() < deadline, f"job {job_id} still {job.status} after {backstop_s:.0f} s"
        time.sleep(0.25)


@pytest.mark.integration
def test_a_job_runs_on_a_worker_and_its_model_serves_completions_at_once(tmp_path, tiny_base_dir):
    Registry(tmp_path / "home").add_base(str(tiny_base_dir), TINY_BASE)
    parts = start(tmp_path)
    log_path = tmp_path / "worker.log"
    worker = None
    try:
        client = openai_client(parts)
        f = upload(client)
        job = client.fine_tuning.jobs.create(model=TINY_BASE, training_file=f.id, suffix="support",
                                             hyperparameters={"n_epochs": 1, "batch_size": 4}, method={"type": "supervised"})
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
        with open(log_path, "wb") as log:
            worker = subprocess.Popen([sys.executable, "-c", "from cli.main import run; run()", "worker", "--max-jobs", "1",
                                       "--home", str(parts["home"])], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        done = wait_for_end(client, job.id, worker)
        assert done.status == "succeeded", (done.error, [e.message for e in client.fine_tuning.jobs.list_events(job.id).data],
                                            log_path.read_text()[-3000:])
        assert done.fine_tuned_model == "support:1" and isinstance(done.finished_at, int) and done.trained_tokens > 0
        events = client.fine_tuning.jobs.list_events(job.id, limit=1000).data
        assert events[0].message == "succeeded: support:1"
        assert any(e.type == "metrics" and "train_loss" in e.data for e in events)
        reply = client.completions.create(model=done.fine_tuned_model, prompt="Say something about the sea.", max_tokens=4)
        assert reply.model == "support:1" and reply.loradock["adapter_version"] == "support:1"
        assert worker.wait(timeout=120) == 0, log_path.read_text()[-3000:]
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait()
        stop(parts)
