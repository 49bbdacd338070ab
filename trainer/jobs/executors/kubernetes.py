"""The Kubernetes executor: each job becomes a `batch/v1` Job whose one pod runs `reg worker --job ID`.

The Job is built from the official `kubernetes` client's models, so what `--dry-run` prints is what
`create_namespaced_job` sends. Its pod talks to the registry server over gRPC (`grpc://loradock-registry:50051`, the
Service deploy/base/registry.yaml defines) with the `worker` token from the `loradock-client-tokens` Secret, as the
worker Deployment in deploy/base/worker.yaml does. `backoffLimit: 0` and `restartPolicy: Never`: retrying is the
queue's business (`reg job resume`), not the Job controller's. With a Kueue queue the Job carries the
`kueue.x-k8s.io/queue-name` label and is created suspended; Kueue unsuspends it once admitted.

`job_status` reads a Job and its pods into an `ExecutorStatus`, a pure function over the client's objects, so it is
tested without a cluster; `status()` only fetches them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields
from typing import ClassVar

import yaml

from registry.errors import Conflict, InvalidInput, LoradockError, NotFound, PermissionDenied, Unavailable, shown
from registry.fields import documented

from .interface import ExecutorStatus, Launch

GIB = 1 << 30
MIN_MEMORY_BYTES = 1 * GIB  # the pod's memory request when the job's estimate is smaller (or unknown)
REQUEST_TIMEOUT_S = 30.0  # one call to the API server
TOKEN_ENV = "LORADOCK_TOKEN"  # the global --token option's variable
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
JOB_ID_LABEL = "loradock.dev/job-id"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
APP_NAME = "loradock-job"  # app.kubernetes.io/name; not the worker Deployment's `loradock-worker`, whose selector it is
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_LABEL_KEY = re.compile(r"([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")


# Each setting's `reg job submit` flag; its environment variable is LORADOCK_K8S_<FIELD>.
FLAGS = {"namespace": "--k8s-namespace", "image": "--k8s-image", "registry_url": "--k8s-registry-url",
         "home": "--k8s-home", "token_secret": "--k8s-token-secret", "token_key": "--k8s-token-key",
         "kueue_queue": "--kueue-queue", "node_selector": "--node-selector", "tolerations": "--toleration",
         "cpu": "--k8s-cpu", "ttl_s": "--k8s-ttl-s"}


def env_name(field: str) -> str:
    return f"LORADOCK_K8S_{field.upper()}"


@dataclass
class KubernetesSettings:
    """Where and how the Jobs are created; every field is a `reg job submit` option (and a LORADOCK_K8S_* variable)."""

    namespace: str = documented("loradock", "Namespace the Job is created in (deploy/overlays: loradock, loradock-dev).")
    image: str = documented("loradock:latest", "Container image with `reg` on its PATH and the jobs' bases registered in "
                                               "its --home.")
    registry_url: str = documented("grpc://loradock-registry:50051", "Registry the pod's worker claims the job from.")
    home: str = documented("/work", "The pod's registry home, where it trains (it must hold the job's base).")
    token_secret: str = documented("loradock-client-tokens", "Secret holding the worker's token (roles worker, read, "
                                                             "push).")
    token_key: str = documented("worker", "Key of the token in that Secret.")
    kueue_queue: str | None = documented(None, "Kueue LocalQueue: label the Job kueue.x-k8s.io/queue-name and create it "
                                               "suspended, for Kueue to admit (unset: no Kueue).")
    node_selector: list[str] = documented(factory=list, help="Node label KEY=VALUE the pod must run on (repeatable).")
    tolerations: list[str] = documented(factory=list, help="Taint the pod tolerates, KEY[=VALUE]:EFFECT as `kubectl "
                                                           "taint` writes it (EFFECT: NoSchedule, PreferNoSchedule, "
                                                           "NoExecute; repeatable).")
    cpu: str = documented("2", "CPU the pod requests.")
    ttl_s: int = documented(86400, "Seconds a finished Job (and its pod's log) is kept: ttlSecondsAfterFinished.",
                            minimum=0)

    @classmethod
    def from_dict(cls, given: dict) -> "KubernetesSettings":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(given) - known)
        if unknown:
            raise InvalidInput(f"kubernetes settings {unknown}: unknown (known: {', '.join(sorted(known))})")
        settings = cls(**given)
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse a setting the API server would refuse, naming it, before anything is queued."""
        if not isinstance(self.namespace, str) or not _DNS_LABEL.fullmatch(self.namespace):
            raise InvalidInput(f"{FLAGS['namespace']} {shown(self.namespace)}: expected a DNS label (lowercase letters, "
                               f"digits and '-')")
        for field in ("image", "registry_url", "home", "token_secret", "token_key", "cpu"):
            value = getattr(self, field)
            if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value):
                raise InvalidInput(f"{FLAGS[field]} {shown(value)}: expected one word")
        if not self.registry_url.startswith(("grpc://", "grpcs://")):
            raise InvalidInput(f"{FLAGS['registry_url']} {shown(self.registry_url)}: expected grpc://HOST:PORT (or "
                               f"grpcs://)")
        if self.kueue_queue is not None and not _DNS_LABEL.fullmatch(str(self.kueue_queue)):
            raise InvalidInput(f"{FLAGS['kueue_queue']} {shown(self.kueue_queue)}: expected a LocalQueue name (a DNS label)")
        if not isinstance(self.ttl_s, int) or self.ttl_s < 0:
            raise InvalidInput(f"{FLAGS['ttl_s']} {shown(self.ttl_s)}: expected 0 or more seconds")
        self.node_selector_labels()
        self.parsed_tolerations()

    def node_selector_labels(self) -> dict[str, str]:
        labels = {}
        for item in self.node_selector:
            key, sep, value = str(item).partition("=")
            if not sep or not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(value):
                raise InvalidInput(f"{FLAGS['node_selector']} {shown(item)}: expected a node label KEY=VALUE")
            labels[key] = value
        return labels

    def parsed_tolerations(self) -> list[dict]:
        """Each toleration as the Toleration object's fields: `key=value:Effect` is Equal, `key:Effect` Exists."""
        parsed = []
        for item in self.tolerations:
            taint, sep, effect = str(item).rpartition(":")
            key, has_value, value = taint.partition("=")
            if not sep or effect not in TAINT_EFFECTS or not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(value):
                raise InvalidInput(f"{FLAGS['tolerations']} {shown(item)}: expected KEY[=VALUE]:EFFECT, EFFECT one of "
                                   f"{', '.join(TAINT_EFFECTS)} (e.g. nvidia.com/gpu=present:NoSchedule)")
            parsed.append({"key": key, "operator": "Equal" if has_value else "Exists", "value": value if has_value else None,
                           "effect": effect})
        return parsed


def job_name(job_id: str) -> str:
    return f"loradock-{job_id}"  # ftjob-<hex>: a valid DNS name, 39 characters


def build_job(launch: Launch, settings: KubernetesSettings):
    """The `V1Job` for one job's worker."""
    from kubernetes import client

    job = launch.job
    gpus = int(job.resources.get("gpus") or 0)
    memory = max(int(job.resources.get("memory_bytes") or 0), MIN_MEMORY_BYTES)
    requests = {"cpu": settings.cpu, "memory": f"{-(-memory // (1 << 20))}Mi"}
    limits = {}
    if gpus:  # an extended resource: its request must equal its limit
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(gpus)
    token = client.V1EnvVar(name=TOKEN_ENV, value_from=client.V1EnvVarSource(
        secret_key_ref=client.V1SecretKeySelector(name=settings.token_secret, key=settings.token_key)))
    container = client.V1Container(
        name="worker", image=settings.image, command=launch.argv,
        env=[token] + [client.V1EnvVar(name=k, value=v) for k, v in sorted(launch.env.items())],
        env_from=[client.V1EnvFromSource(config_map_ref=client.V1ConfigMapEnvSource(name="loradock-config", optional=True))],
        resources=client.V1ResourceRequirements(requests=requests, limits=limits or None),
    )
    labels = {"app.kubernetes.io/name": APP_NAME, "app.kubernetes.io/part-of": "loradock", JOB_ID_LABEL: job.id}
    job_labels = {**labels, **({KUEUE_QUEUE_LABEL: settings.kueue_queue} if settings.kueue_queue else {})}
    pod = client.V1PodSpec(
        containers=[container], restart_policy="Never", termination_grace_period_seconds=60,
        node_selector=settings.node_selector_labels() or None,
        tolerations=[client.V1Toleration(**t) for t in settings.parsed_tolerations()] or None,
    )
    return client.V1Job(
        api_version="batch/v1", kind="Job",
        metadata=client.V1ObjectMeta(name=job_name(job.id), namespace=settings.namespace, labels=job_labels,
                                     annotations={"loradock.dev/adapter": job.adapter}),
        spec=client.V1JobSpec(
            backoff_limit=0, ttl_seconds_after_finished=settings.ttl_s,
            suspend=True if settings.kueue_queue else None,
            template=client.V1PodTemplateSpec(metadata=client.V1ObjectMeta(labels=labels), spec=pod),
        ),
    )


def job_status(job, pods: list) -> ExecutorStatus:
    """What a `V1Job` and its `V1Pod`s say of the worker: the Job's conditions and counts first, then its pod's
    phase and, while it waits, why (ImagePullBackOff, Unschedulable, ...)."""
    name, status = job.metadata.name, job.status
    conditions = {c.type: c for c in (status.conditions or []) if c.status == "True"} if status else {}
    for kind, state in (("Complete", "succeeded"), ("Failed", "failed")):
        if kind in conditions:
            c = conditions[kind]
            return ExecutorStatus(state, f"job {name}: {kind.lower()}" + _why(c.reason, c.message))
    if status and status.succeeded:
        return ExecutorStatus("succeeded", f"job {name}: its pod succeeded")
    if status and status.failed:
        return ExecutorStatus("failed", f"job {name}: its pod failed")
    if job.spec.suspend or "Suspended" in conditions:
        return ExecutorStatus("pending", f"job {name}: suspended, waiting to be admitted (Kueue)")
    if not pods:
        return ExecutorStatus("pending", f"job {name}: no pod yet")
    pod = max(pods, key=lambda p: str(p.metadata.creation_timestamp or ""))  # the newest
    return _pod_status(pod)


def _pod_status(pod) -> ExecutorStatus:
    name, status = pod.metadata.name, pod.status
    phase = (status.phase if status else None) or "Pending"
    for cs in (status.container_statuses or []) if status else []:
        waiting = cs.state.waiting if cs.state else None
        if waiting and waiting.reason:
            return ExecutorStatus("pending" if phase == "Pending" else "running",
                                  f"pod {name}: {waiting.reason}" + _why(None, waiting.message))
    if phase == "Pending":
        unscheduled = [c for c in (status.conditions or []) if c.type == "PodScheduled" and c.status == "False"]
        if unscheduled:
            return ExecutorStatus("pending", f"pod {name}: {unscheduled[0].reason or 'not scheduled'}"
                                  + _why(None, unscheduled[0].message))
        return ExecutorStatus("pending", f"pod {name}: pending")
    state = {"Running": "running", "Succeeded": "succeeded", "Failed": "failed"}.get(phase, "unknown")
    return ExecutorStatus(state, f"pod {name}: {phase.lower()}" + _why(status.reason, status.message))


def _why(reason: str | None, message: str | None) -> str:
    text = ": ".join(part for part in (reason, message) if part)
    return f" ({' '.join(text.split())[:300]})" if text else ""


class KubernetesExecutor:
    """Jobs as `batch/v1` Jobs through `BatchV1Api`: in-cluster credentials, else the kubeconfig ($KUBECONFIG)."""

    name: ClassVar[str] = "kubernetes"

    def __init__(self, settings: KubernetesSettings | None = None):
        self.settings = settings or KubernetesSettings()
        self._api = None

    def render(self, launch: Launch) -> str:
        from kubernetes import client

        manifest = client.ApiClient().sanitize_for_serialization(build_job(launch, self.settings))
        return yaml.safe_dump(manifest, sort_keys=False)

    def launch(self, launch: Launch) -> str:
        body = build_job(launch, self.settings)
        batch = self._batch()
        self._call(lambda: batch.create_namespaced_job(self.settings.namespace, body, _request_timeout=REQUEST_TIMEOUT_S),
                   f"create Job {body.metadata.name} in namespace {self.settings.namespace}")
        return body.metadata.name

    def status(self, handle: str) -> ExecutorStatus:
        from kubernetes import client

        namespace = self.settings.namespace
        try:
            job = self._call(lambda: self._batch().read_namespaced_job(handle, namespace,
                                                                       _request_timeout=REQUEST_TIMEOUT_S),
                             f"read Job {handle}")
        except NotFound:
            return ExecutorStatus("unknown", f"job {handle}: not in namespace {namespace} (deleted, or kept no longer "
                                             f"than its ttlSecondsAfterFinished)")
        core = client.CoreV1Api(self._batch().api_client)
        pods = self._call(lambda: core.list_namespaced_pod(namespace, label_selector=f"job-name={handle}",
                                                           _request_timeout=REQUEST_TIMEOUT_S), f"list pods of {handle}")
        return job_status(job, pods.items)

    def stop(self, handle: str) -> None:
        batch = self._batch()
        try:
            self._call(lambda: batch.delete_namespaced_job(handle, self.settings.namespace,
                                                           propagation_policy="Background",
                                                           _request_timeout=REQUEST_TIMEOUT_S), f"delete Job {handle}")
        except NotFound:
            pass  # already gone: nothing to stop

    # --- the API server -----------------------------------------------------------------------------

    def _batch(self):
        if self._api is None:
            from kubernetes import client, config

            configuration = client.Configuration()
            try:
                config.load_incluster_config(client_configuration=configuration)
            except config.ConfigException:
                try:  # $KUBECONFIG read now: the client reads it once, when first imported
                    config.load_kube_config(os.environ.get("KUBECONFIG"), client_configuration=configuration)
                except (config.ConfigException, OSError) as exc:
                    raise Unavailable(f"no Kubernetes API server to talk to: not in a cluster, and no usable kubeconfig "
                                      f"({_one_line(exc)}); set KUBECONFIG") from None
            configuration.retries = 1  # an unreachable server is reported in seconds, not after urllib3's default 3
            self._api = client.BatchV1Api(client.ApiClient(configuration))
        return self._api

    def _call(self, fn, what: str):
        """`fn()`, its failures as the one error table's classes, naming the server and what was asked."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        server = self._batch().api_client.configuration.host
        try:
            return fn()
        except ApiException as exc:
            error = {401: PermissionDenied, 403: PermissionDenied, 404: NotFound, 409: Conflict,
                     422: InvalidInput}.get(exc.status, Unavailable if (exc.status or 500) >= 500 else LoradockError)
            raise error(f"Kubernetes API server {server} refused to {what}: {exc.status} {exc.reason}"
                        f"{_api_message(exc)}") from None
        except (HTTPError, OSError) as exc:
            raise Unavailable(f"Kubernetes API server {server} is unreachable ({_network_reason(exc)}); could not "
                              f"{what}") from None


def _api_message(exc) -> str:
    import json

    try:
        message = json.loads(exc.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return f": {_one_line(message)}" if message else ""


def _network_reason(exc) -> str:
    """The root of a connection failure, "Connection refused" rather than urllib3's retry wrapper around it."""
    text = str(getattr(exc, "reason", None) or exc)
    found = re.search(r"\[Errno -?\d+\] ([^\"')\]]+)", text)
    return found.group(1).strip() if found else _one_line(text.rpartition(": ")[2] or text)


def _one_line(exc) -> str:
    return " ".join(str(exc).split())[:300]

