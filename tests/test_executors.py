"""Jobs on external executors: `reg worker --job ID`, jobs that ordinary workers leave alone, the Kubernetes Job.

`reg worker --job ID` is a real worker process (local home, and over gRPC against a served registry) that runs
exactly that job. The Kubernetes executor is checked without a cluster: `reg job submit --executor kubernetes
--dry-run` prints the Job, which must build into the official client's models with no field they do not know and
whose command our own CLI parses; a launch against an API server that is not there ends the job failed in one line;
`job_status` reads Job and Pod objects built with the client's models in each state.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from conftest import run_reg, snapshot
from test_deploy import build_model, reg_command_tree
from test_jobs import write_config
from test_jobs_remote_worker import served, start_remote_worker, worker_home  # noqa: F401 - fixtures

from registry.jobs import SubmitRequest
from trainer.jobs.executors import ExecutorStatus
from trainer.jobs.executors.kubernetes import KUEUE_QUEUE_LABEL, job_status
from trainer.jobs.submit import submit as submit_request

kubernetes = pytest.importorskip("kubernetes", reason="the `kubernetes` client (dev extra)")
from kubernetes import client as k8s  # noqa: E402

WAIT_S = 600  # a backstop for a hung job, never a measure of speed
CPU = {"device": "cpu", "device_name": "cpu", "memory_bytes": 64 << 30, "gpus": []}


def reg_cmd(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "reg"), *args]


def run_worker(home: Path, *args: str, log: Path | None = None) -> subprocess.CompletedProcess:
    """A real `reg worker ...` process on `home`, to its end."""
    env = {**os.environ, "LORADOCK_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.run(reg_cmd("worker", "--lease-s", "3", *args), env=env, capture_output=True, text=True,
                          timeout=WAIT_S)


def queue_for(registry, tmp_path: Path, name: str, executor: str = "local") -> str:
    """A job queued for `executor` without launching it (as `reg job submit` does before it hands the job over)."""
    return submit_request(registry, SubmitRequest(config_path=str(write_config(tmp_path, name=name)),
                                                  executor=executor)).id


def dry_run(capsys, tmp_path: Path, *args: str) -> dict:
    code, out, err = run_reg(capsys, "job", "submit", str(write_config(tmp_path)), "--executor", "kubernetes",
                             "--dry-run", *args)
    assert code == 0, err
    return yaml.safe_load(out)


def one_line(err: str) -> bool:
    return len(err.strip().splitlines()) == 1 and "Traceback" not in err


# --- reg worker --job ID -----------------------------------------------------------------------------------------


@pytest.mark.integration
def test_worker_job_runs_exactly_that_job_and_leaves_the_others_queued(tmp_path, registry):
    other = queue_for(registry, tmp_path, "other")
    wanted = queue_for(registry, tmp_path, "wanted", executor="kubernetes")  # claimed by id whatever its executor
    done = run_worker(registry.home, "--job", wanted)
    assert done.returncode == 0, done.stderr[-3000:]
    job = registry.jobs.get(wanted)
    assert job.state == "succeeded" and job.result_version == "wanted:1" and job.attempts == 1
    assert registry.resolve("wanted:1").run_id == job.run_id
    assert f"{wanted}: succeeded, wanted:1" in done.stdout
    assert registry.jobs.get(other).state == "queued" and registry.jobs.events(other)[-1].data["state"] == "queued"


@pytest.mark.integration
def test_worker_job_refuses_an_unknown_or_finished_job_in_one_line_and_changes_nothing(tmp_path, registry, capsys):
    finished = queue_for(registry, tmp_path, "finished")
    run_reg(capsys, "job", "cancel", finished)
    before = snapshot(registry.home)
    for job_id, code, needle in ((finished, 4, f"job {finished} is cancelled, not queued"),
                                 ("ftjob-000000000000000000000000", 3, "no job 'ftjob-000000000000000000000000'"),
                                 ("not-a-job", 2, "job id 'not-a-job'")):
        done = run_worker(registry.home, "--job", job_id)
        assert done.returncode == code and needle in done.stderr and one_line(done.stderr), done.stderr
    assert snapshot(registry.home) == before


def test_a_job_claimed_by_id_must_be_queued_and_fit(tmp_path, registry):
    from registry.errors import Conflict

    job_id = queue_for(registry, tmp_path, "gpu-job", executor="ray")
    registry.conn.execute("UPDATE jobs SET resources_json=? WHERE id=?", (json.dumps({"gpus": 2}), job_id))
    with pytest.raises(Conflict, match="it needs 2 GPU"):
        registry.jobs.claim("w1", CPU, job_id=job_id)
    registry.conn.execute("UPDATE jobs SET resources_json='{}' WHERE id=?", (job_id,))
    assert registry.jobs.claim("w1", CPU, job_id=job_id).worker_id == "w1"
    with pytest.raises(Conflict, match=f"job {job_id} is running on worker w1"):
        registry.jobs.claim("w2", CPU, job_id=job_id)


@pytest.mark.integration
def test_an_ordinary_worker_does_not_claim_a_kubernetes_or_ray_job(tmp_path, registry):
    external = [queue_for(registry, tmp_path, f"on-{name}", executor=name) for name in ("kubernetes", "ray")]
    assert registry.jobs.claim("w1", CPU) is None
    done = run_worker(registry.home, "--exit-when-idle")
    assert done.returncode == 0 and "after 0 job(s)" in done.stdout, done.stderr[-2000:]
    for job_id in external:
        job = registry.jobs.get(job_id)
        assert job.state == "queued" and job.attempts == 0 and job.worker_id is None


def test_a_lapsed_or_handed_back_external_job_fails_rather_than_waiting_for_nothing(tmp_path, registry):
    """No `reg worker` claims a kubernetes job, so the queue never puts one back: it ends failed, to be resumed."""
    lapsed, handed_back = (queue_for(registry, tmp_path, n, executor="kubernetes") for n in ("lapsed", "handed-back"))
    registry.jobs.claim("pod-1", CPU, lease_s=0.01, job_id=lapsed)
    registry.jobs.claim("pod-2", CPU, job_id=handed_back)
    assert registry.jobs.finish(handed_back, "pod-2", "queued", error="worker pod-2 stopped")
    registry.conn.execute("UPDATE jobs SET lease_expires=0 WHERE id=?", (lapsed,))
    assert registry.jobs.claim("pod-3", CPU) is None  # requeues expired leases first
    for job_id, why in ((lapsed, "worker pod-1 stopped renewing its lease"), (handed_back, "worker pod-2 stopped")):
        job = registry.jobs.get(job_id)
        assert job.state == "failed" and why in job.error and f"reg job resume {job_id}" in job.error
    from registry.errors import Conflict

    with pytest.raises(Conflict, match=f"job {lapsed} runs on kubernetes: resume it with `reg job resume {lapsed}` on"):
        registry.jobs.resume(lapsed)  # what a remote `reg job resume` reaches: nothing would launch it
    assert registry.jobs.resume_to_launch(lapsed).state == "queued"


@pytest.mark.integration
def test_worker_job_runs_a_served_registry_s_job_over_grpc(served, worker_home, capsys, tmp_path):  # noqa: F811
    registry = served["registry"]
    other = queue_for(registry, tmp_path, "other")
    wanted = queue_for(registry, tmp_path, "wanted", executor="kubernetes")
    log = tmp_path / "worker.log"
    worker = start_remote_worker(served, worker_home, "gpu-box", log, "--job", wanted)
    assert worker.wait(WAIT_S) == 0, log.read_text(errors="replace")[-3000:]
    job = registry.jobs.get(wanted)
    assert job.state == "succeeded" and registry.resolve(job.result_version).adapter == "wanted"
    assert registry.jobs.get(other).state == "queued"
    worker = start_remote_worker(served, worker_home, "gpu-box", log, "--job", wanted)
    assert worker.wait(WAIT_S) == 4 and f"job {wanted} is succeeded, not queued" in log.read_text().splitlines()[-1]


# --- the Kubernetes Job -------------------------------------------------------------------------------------------


def test_dry_run_prints_a_job_the_client_s_models_build_and_queues_nothing(tmp_path, registry, capsys):
    doc = dry_run(capsys, tmp_path, "--gpus", "2", "--node-selector", "nvidia.com/gpu.product=H100",
                  "--node-selector", "pool=train", "--toleration", "nvidia.com/gpu=present:NoSchedule",
                  "--toleration", "spot:NoExecute", "--k8s-namespace", "ml")
    job = build_model(doc, "V1Job", "the dry run")
    assert (job.api_version, job.kind, job.metadata.namespace) == ("batch/v1", "Job", "ml")
    spec, pod = job.spec, job.spec.template.spec
    assert spec.backoff_limit == 0 and spec.ttl_seconds_after_finished > 0 and pod.restart_policy == "Never"
    assert spec.suspend is None and KUEUE_QUEUE_LABEL not in job.metadata.labels
    assert job.metadata.labels["app.kubernetes.io/name"] == pod_labels(job)["app.kubernetes.io/name"]
    [container] = pod.containers
    assert container.resources.requests["nvidia.com/gpu"] == container.resources.limits["nvidia.com/gpu"] == "2"
    assert pod.node_selector == {"nvidia.com/gpu.product": "H100", "pool": "train"}
    assert [(t.key, t.operator, t.value, t.effect) for t in pod.tolerations] == [
        ("nvidia.com/gpu", "Equal", "present", "NoSchedule"), ("spot", "Exists", None, "NoExecute")]
    [token] = [e for e in container.env if e.name == "LORADOCK_TOKEN"]
    assert token.value is None and token.value_from.secret_key_ref.name == "loradock-client-tokens"
    argv = container.command
    assert argv[:3] == ["reg", "--registry", "grpc://loradock-registry:50051"]
    assert argv[3:6] == ["worker", "--job", job.metadata.labels["loradock.dev/job-id"]] and argv[-2:] == ["--gpus", "0,1"]
    assert registry.jobs.list() == []


def pod_labels(job) -> dict:
    return job.spec.template.metadata.labels


def test_the_job_s_command_is_one_our_cli_parses_and_documents(tmp_path, registry, capsys):
    """Parsed by the real click tree (a flag `reg worker` lacks fails here), and every flag is in `reg worker --help`."""
    argv = dry_run(capsys, tmp_path, "--gpus", "1")["spec"]["template"]["spec"]["containers"][0]["command"]
    group = reg_command_tree()
    verb_at = argv.index("worker")
    with group.make_context("reg", argv[1:verb_at + 1]) as ctx:
        with group.commands["worker"].make_context("worker", argv[verb_at + 1:], parent=ctx) as worker_ctx:
            assert worker_ctx.params["job"] == argv[argv.index("--job") + 1] and worker_ctx.params["gpus"] == "0"
    code, out, _ = run_reg(capsys, "worker", "--help")
    assert code == 0
    for flag in (word for word in argv[verb_at:] if word.startswith("--")):
        assert flag in out, f"{flag} not in `reg worker --help`"


def test_a_kueue_queue_labels_the_job_and_creates_it_suspended(tmp_path, registry, capsys):
    job = build_model(dry_run(capsys, tmp_path, "--kueue-queue", "team-a"), "V1Job", "the dry run")
    assert job.metadata.labels[KUEUE_QUEUE_LABEL] == "team-a" and job.spec.suspend is True
    assert KUEUE_QUEUE_LABEL not in pod_labels(job)


@pytest.mark.parametrize("args, code, needle", [
    (["--toleration", "nvidia.com/gpu=present"], 2, "--toleration 'nvidia.com/gpu=present': expected KEY[=VALUE]:EFFECT"),
    (["--toleration", "gpu:Sometimes"], 2, "--toleration 'gpu:Sometimes'"),
    (["--node-selector", "pool"], 2, "--node-selector 'pool': expected a node label KEY=VALUE"),
    (["--gpus", "-1"], 2, "gpus -1"),
    (["--k8s-namespace", "Not_A_Namespace"], 2, "--k8s-namespace 'Not_A_Namespace'"),
    (["--k8s-registry-url", "http://registry"], 2, "--k8s-registry-url 'http://registry'"),
    (["--ray-address", "http://head:8265"], 2, "--ray-address: options of the ray executor"),
    (["--executor", "slurm"], 2, "--executor 'slurm'"),
])
def test_bad_settings_are_one_line_and_queue_nothing(tmp_path, registry, capsys, args, code, needle):
    path = write_config(tmp_path)
    executor = [] if "--executor" in args else ["--executor", "kubernetes"]
    for dry in ([], ["--dry-run"]):
        before = snapshot(registry.home)
        got, _, err = run_reg(capsys, "job", "submit", str(path), *executor, *dry, *args)
        assert got == code and needle in err and one_line(err), err
        assert registry.jobs.list() == [] and snapshot(registry.home) == before


def test_settings_come_from_the_environment_and_another_executor_s_variables_are_ignored(tmp_path, registry, capsys,
                                                                                          monkeypatch):
    monkeypatch.setenv("LORADOCK_K8S_NAMESPACE", "from-env")
    monkeypatch.setenv("LORADOCK_K8S_TOLERATIONS", "spot:NoSchedule")
    doc = dry_run(capsys, tmp_path)
    assert doc["metadata"]["namespace"] == "from-env"
    assert doc["spec"]["template"]["spec"]["tolerations"] == [{"effect": "NoSchedule", "key": "spot", "operator": "Exists"}]
    code, out, err = run_reg(capsys, "job", "submit", str(write_config(tmp_path)))  # a local job: the variables are not its
    assert code == 0, err
    assert registry.jobs.get(out.strip()).executor == "local"


def test_dry_run_is_refused_for_a_local_job(tmp_path, registry, capsys):
    code, _, err = run_reg(capsys, "job", "submit", str(write_config(tmp_path)), "--dry-run")
    assert code == 2 and "--executor kubernetes or ray" in err and one_line(err)
    assert registry.jobs.list() == []


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once it is closed


@pytest.fixture
def unreachable_api_server(tmp_path, monkeypatch) -> str:
    """A kubeconfig naming an API server on a port nothing listens on; its address."""
    server = f"https://127.0.0.1:{closed_port()}"
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "gone",
        "clusters": [{"name": "gone", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "me", "user": {"token": "not-a-real-token"}}],
        "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "me"}}],
    }))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # not in a cluster: the kubeconfig is used
    return server


def test_a_launch_the_api_server_never_answers_ends_the_job_failed_in_one_line(tmp_path, registry, capsys,
                                                                                unreachable_api_server):
    code, _, err = run_reg(capsys, "job", "submit", str(write_config(tmp_path)), "--executor", "kubernetes",
                           "--k8s-namespace", "ml")
    assert code == 9 and f"Kubernetes API server {unreachable_api_server} is unreachable" in err and one_line(err), err
    [job] = registry.jobs.list()
    assert job.state == "failed" and unreachable_api_server in job.error and job.executor == "kubernetes"
    assert job.executor_handle is None and job.extra["launch"]["settings"] == {"namespace": "ml"}
    code, out, _ = run_reg(capsys, "job", "show", job.id, "--json")
    assert code == 0 and json.loads(out)["executor"] == "kubernetes" and json.loads(out)["state"] == "failed"
    code, out, _ = run_reg(capsys, "job", "show", job.id)
    assert code == 0 and ["executor", "kubernetes"] in [line.split() for line in out.splitlines()]
    # resume launches it again, with the settings it was submitted with: refused the same way, failed again
    code, _, err = run_reg(capsys, "job", "resume", job.id)
    assert code == 9 and "namespace ml" in err and one_line(err), err
    assert registry.jobs.get(job.id).state == "failed"


def test_cancelling_a_launched_job_the_api_server_cannot_stop_still_cancels_it(tmp_path, registry, capsys,
                                                                                unreachable_api_server):
    job_id = queue_for(registry, tmp_path, "launched", executor="kubernetes")
    registry.jobs.record_launch(job_id, "loradock-" + job_id)
    code, out, err = run_reg(capsys, "job", "cancel", job_id)
    assert code == 0 and f"{job_id}: cancelled" in out and registry.jobs.get(job_id).state == "cancelled"
    assert f"loradock-{job_id} was not stopped on kubernetes" in err and unreachable_api_server in err and one_line(err)


def test_a_launched_job_shows_its_handle_and_is_claimed_only_by_its_worker(tmp_path, registry):
    job_id = queue_for(registry, tmp_path, "launched", executor="kubernetes")
    job = registry.jobs.record_launch(job_id, "loradock-" + job_id)
    assert job.executor_handle == "loradock-" + job_id and job.state == "queued"
    assert registry.jobs.events(job_id)[-1].message == f"launched on kubernetes: loradock-{job_id}"
    assert registry.jobs.claim("w1", CPU) is None


# --- status(): what the Job and its pod say ----------------------------------------------------------------------


def k8s_job(conditions=(), suspend=None, **counts):
    return k8s.V1Job(metadata=k8s.V1ObjectMeta(name="loradock-ftjob-x"),
                     spec=k8s.V1JobSpec(template=k8s.V1PodTemplateSpec(), suspend=suspend),
                     status=k8s.V1JobStatus(conditions=[k8s.V1JobCondition(type=t, status="True", reason=r, message=m)
                                                        for t, r, m in conditions] or None, **counts))


def k8s_pod(phase, waiting=None, unschedulable=None, age_s=0):
    statuses = None
    if waiting:
        statuses = [k8s.V1ContainerStatus(name="worker", image="loradock:latest", image_id="", ready=False,
                                           restart_count=0, state=k8s.V1ContainerState(
                                               waiting=k8s.V1ContainerStateWaiting(reason=waiting[0], message=waiting[1])))]
    conditions = [k8s.V1PodCondition(type="PodScheduled", status="False", reason="Unschedulable",
                                     message=unschedulable)] if unschedulable else None
    created = datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=age_s)
    return k8s.V1Pod(metadata=k8s.V1ObjectMeta(name=f"loradock-ftjob-x-{age_s}", creation_timestamp=created),
                     status=k8s.V1PodStatus(phase=phase, container_statuses=statuses, conditions=conditions))


@pytest.mark.parametrize("job, pods, state, needle", [
    (k8s_job(), [], "pending", "job loradock-ftjob-x: no pod yet"),
    (k8s_job(suspend=True), [], "pending", "suspended, waiting to be admitted"),
    (k8s_job(active=1), [k8s_pod("Pending", unschedulable="0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")],
     "pending", "pod loradock-ftjob-x-0: Unschedulable (0/3 nodes are available: 3 Insufficient nvidia.com/gpu.)"),
    (k8s_job(active=1), [k8s_pod("Pending", waiting=("ImagePullBackOff", 'Back-off pulling image "loradock:latest"'))],
     "pending", "pod loradock-ftjob-x-0: ImagePullBackOff (Back-off pulling image \"loradock:latest\")"),
    (k8s_job(active=1), [k8s_pod("Failed", age_s=0), k8s_pod("Running", age_s=5)], "running",
     "pod loradock-ftjob-x-5: running"),
    (k8s_job(conditions=[("Complete", None, None)], succeeded=1), [k8s_pod("Succeeded")], "succeeded",
     "job loradock-ftjob-x: complete"),
    (k8s_job(conditions=[("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")], failed=1),
     [k8s_pod("Failed")], "failed", "failed (BackoffLimitExceeded: Job has reached the specified backoff limit)"),
    (k8s_job(failed=1), [], "failed", "its pod failed"),
], ids=["no-pod", "suspended", "unschedulable", "image-pull-backoff", "running", "succeeded", "failed", "failed-count"])
def test_status_reads_the_job_and_its_newest_pod(job, pods, state, needle):
    status = job_status(job, pods)
    assert isinstance(status, ExecutorStatus) and status.state == state
    assert needle in status.message and "\n" not in status.message
