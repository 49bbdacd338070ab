"""The Ray executor: each job's worker (`reg worker --job ID`) runs as one Ray job, through the Ray Jobs API.

`JobSubmissionClient` talks to the cluster's dashboard (http://HEAD:8265, where `ray start --head` serves the Jobs
API); the job's entrypoint is the worker command, scheduled with the job's CPUs and GPUs as entrypoint resources,
so a GPU job lands on a node with free GPUs, which Ray then exposes to it as CUDA_VISIBLE_DEVICES.

The entrypoint is a shell command run on a Ray node, in the environment that node's `ray start` ran in, plus the
job's `env_vars`: nothing is uploaded (unless `runtime_env` says so), so loradock must already be installed there. On a real
cluster its image carries loradock (`reg` on the PATH, the jobs' bases registered in the worker's --home) and
the worker's token as the node's own LORADOCK_TOKEN (with KubeRay, from a Secret in the pod's env): a token is
never put in `env_vars`, which anyone with the dashboard can read. For a local cluster started from outside
loradock's virtualenv, `reg` names the virtualenv's `bin/reg`, whose shebang is its Python.

A stopped Ray job's processes are SIGTERMed, then SIGKILLed after RAY_JOB_STOP_WAIT_TIME_S (3 s): the worker
hands its job back, which the queue ends `failed` (nothing would start another worker for it; `reg job resume`
launches one), or else the job's lease lapses to the same end.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
from typing import ClassVar

from registry.errors import Conflict, InvalidInput, LoradockError, NotFound, PermissionDenied, Unavailable, shown

from .interface import ExecutorStatus, Launch

ADDRESS_ENV = "RAY_ADDRESS"  # as the `ray job` CLI reads it
ADDRESS_FLAG = "--ray-address"
# Ray's JobStatus -> ExecutorStatus.state; a stopped Ray job ended before its worker did, so it failed.
STATES = {"PENDING": "pending", "RUNNING": "running", "SUCCEEDED": "succeeded", "FAILED": "failed", "STOPPED": "failed"}
MESSAGE_CHARS = 300


class RayExecutor:
    """Jobs as Ray jobs on the cluster whose dashboard is at `address` (default: $RAY_ADDRESS).

    `num_cpus`: the CPUs each worker is scheduled with (default: one per training process); `runtime_env`: Ray's
    runtime environment for it (`env_vars`, `pip`, `container`, ...), the launch's own variables added to its
    `env_vars`; `reg`: the `reg` command on the Ray nodes."""

    name: ClassVar[str] = "ray"

    def __init__(self, address: str | None = None, num_cpus: float | None = None, runtime_env: dict | None = None,
                 reg: str = "reg"):
        self.address = _checked_address(address)
        if num_cpus is not None and (isinstance(num_cpus, bool) or not isinstance(num_cpus, (int, float))
                                     or num_cpus <= 0):
            raise InvalidInput(f"ray num_cpus {shown(num_cpus)}: expected a number of CPUs above 0")
        self.num_cpus = num_cpus
        self.runtime_env = _checked_runtime_env(runtime_env)
        if not isinstance(reg, str) or not reg.strip():
            raise InvalidInput(f"ray reg {shown(reg)}: expected the `reg` command on the Ray nodes (a path or a name "
                               f"on their PATH)")
        self.reg = reg
        self._client = None

    def submission(self, launch: Launch) -> dict:
        """The arguments of `JobSubmissionClient.submit_job` (the fields of the Jobs API's POST /api/jobs/)."""
        job = launch.job
        argv = [self.reg, *launch.argv[1:]]  # launch.argv[0] is `reg`, as the nodes' PATH may not resolve it
        env_vars = {**self.runtime_env.get("env_vars", {}), **launch.env}
        gpus = int(job.resources.get("gpus") or 0)
        processes = int(job.resources.get("num_processes") or 1)
        body = {
            "entrypoint": shlex.join(argv),
            # the attempt it starts, and a few random characters: Ray keeps every submission id the cluster has seen
            "submission_id": f"loradock-{job.id}-{job.attempts + 1}-{secrets.token_hex(3)}",
            "runtime_env": {**self.runtime_env, "env_vars": env_vars},
            "metadata": {"loradock_job": job.id, "loradock_adapter": job.adapter},
            "entrypoint_num_cpus": self.num_cpus if self.num_cpus is not None else max(1, processes),
        }
        if gpus:
            body["entrypoint_num_gpus"] = gpus
        return body

    def render(self, launch: Launch) -> str:
        return json.dumps({"address": self.address, **self.submission(launch)}, indent=2)

    def launch(self, launch: Launch) -> str:
        body = self.submission(launch)
        client = self._connect()
        return self._call(lambda: client.submit_job(**body), f"submit {body['submission_id']}")

    def status(self, handle: str) -> ExecutorStatus:
        client = self._connect()
        try:
            info = self._call(lambda: client.get_job_info(handle), f"read Ray job {handle}")
        except NotFound:
            return ExecutorStatus("unknown", f"ray job {handle}: not on the cluster at {self.address} (a head "
                                             f"restarted since keeps no record of it)")
        status = str(getattr(info.status, "value", info.status))
        message = " ".join(str(info.message or "").split())[:MESSAGE_CHARS]
        return ExecutorStatus(STATES.get(status, "unknown"),
                              f"ray job {handle}: {status.lower()}" + (f" ({message})" if message else ""))

    def stop(self, handle: str) -> None:
        client = self._connect()
        try:
            self._call(lambda: client.stop_job(handle), f"stop Ray job {handle}")  # False: it had ended already
        except NotFound:
            pass  # already gone: nothing to stop

    def logs(self, handle: str) -> str:
        """What the Ray job's entrypoint (the worker) printed, as Ray keeps it: Ray's own log of the job."""
        client = self._connect()
        return self._call(lambda: client.get_job_logs(handle), f"read the logs of Ray job {handle}")

    # --- the cluster's Jobs API ---------------------------------------------------------------------

    def _connect(self):
        """The client, made once: making it asks the dashboard for its Ray version, so a wrong address fails here."""
        if self._client is None:
            try:
                from ray.job_submission import JobSubmissionClient
            except ImportError:
                raise InvalidInput("the ray executor needs the Ray Jobs client, which is not installed here: "
                                   "pip install 'ray[default]'") from None
            self._client = self._call(lambda: JobSubmissionClient(self.address), "connect")
        return self._client

    def _call(self, fn, what: str):
        """`fn()`, its failures as the one error table's classes, naming the cluster and what was asked."""
        try:
            return fn()
        except OSError as exc:  # ConnectionError, requests' errors: the dashboard is down, or nothing listens there
            raise Unavailable(f"the Ray cluster at {self.address} is unreachable ({_one_line(exc)}); could not {what}: "
                              f"is its head up, and is this its dashboard's address?") from None
        except RuntimeError as exc:  # the Jobs API answered with an error status
            code, reason = _refusal(str(exc))
            if code is None and "Version check returned 404" in str(exc):
                raise Unavailable(f"{self.address} is not a Ray dashboard (GET /api/version answered 404): give "
                                  f"{ADDRESS_FLAG} the dashboard's URL, http://HEAD:8265") from None
            error = {400: Conflict if "already exists" in reason else InvalidInput, 401: PermissionDenied,
                     403: PermissionDenied, 404: NotFound}.get(code, Unavailable if (code or 500) >= 500 else LoradockError)
            raise error(f"the Ray cluster at {self.address} refused to {what}: "
                        + (f"{code} " if code else "") + reason) from None
        except (TypeError, ValueError) as exc:  # refused by the client before sending, e.g. a runtime_env value
            raise InvalidInput(f"the Ray Jobs client refused to {what} on {self.address}: {_one_line(exc)}") from None


def _checked_address(address: str | None) -> str:
    """The dashboard's URL: `address`, else $RAY_ADDRESS. Only http(s): JobSubmissionClient would take a bare
    HOST:PORT as a GCS address and wait 40 s for it."""
    source = ADDRESS_FLAG
    if address is None:
        address, source = os.environ.get(ADDRESS_ENV), ADDRESS_ENV
    if not address:
        raise InvalidInput(f"no Ray cluster given: pass {ADDRESS_FLAG} http://HEAD:8265 (the dashboard, where "
                           f"`ray start --head` serves the Jobs API) or set {ADDRESS_ENV}")
    if not isinstance(address, str) or not re.fullmatch(r"https?://[^\s/]+/?", address):
        raise InvalidInput(f"{source} {shown(address)}: expected the Ray dashboard's URL, http://HOST:PORT (8265 unless "
                           f"`ray start --dashboard-port` said otherwise)")
    return address.rstrip("/")


def _checked_runtime_env(runtime_env: dict | None) -> dict:
    runtime_env = {} if runtime_env is None else runtime_env
    if not isinstance(runtime_env, dict):
        raise InvalidInput(f"ray runtime_env {shown(runtime_env)}: expected a mapping (Ray's runtime_env keys)")
    env_vars = runtime_env.get("env_vars", {})
    if not isinstance(env_vars, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()):
        raise InvalidInput(f"ray runtime_env.env_vars {shown(env_vars)}: expected a mapping of names to strings")
    return runtime_env


def _refusal(text: str) -> tuple[int | None, str]:
    """(HTTP status, the reason on one line) of a Jobs API error: its text is often the server's traceback, whose
    last line is the exception that says why."""
    match = re.match(r"Request failed with status code (\d+): (.*)", text, re.DOTALL)
    code, body = (int(match.group(1)), match.group(2)) if match else (None, text)
    lines = [line.strip() for line in body.splitlines() if line.strip().strip(".")]
    return code, (lines[-1] if lines else "no reason given")[:MESSAGE_CHARS]


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:MESSAGE_CHARS]
