"""A real local Ray cluster for the tests: `ray start --head --block` on free ports, in its own temp dir, ended by pid.

Not `ray stop`: that ends every Ray process on the machine, and CI shares it. Every process this cluster starts,
down to the jobs' entrypoints and their training processes, inherits `MARKER=<its temp dir>` from the `ray start`
process; `stop_ray_cluster` kills by pid whatever carries the marker, and fails if anything survives. A test process
killed outright takes the cluster with it (`ray start` dies with its parent).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from load_tests import free_ports

RAY = str(Path(sys.executable).parent / "ray")
MARKER = "LORADOCK_TEST_RAY_CLUSTER"
START_WAIT_S = 180  # a backstop for a head that never comes up, never a measure of speed
STOP_WAIT_S = 60
OBJECT_STORE_BYTES = 100 * 2**20  # the jobs pass no objects; the default (30 % of RAM) would take /dev/shm
PORT_FLAGS = ("--port", "--dashboard-port", "--node-manager-port", "--object-manager-port", "--ray-client-server-port",
              "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
              "--metrics-export-port")


@dataclass
class RayCluster:
    address: str  # the dashboard's URL: the Ray Jobs API
    temp_dir: Path
    proc: subprocess.Popen
    log_path: Path
    start_s: float  # from `ray start` to the Jobs API answering

    def pids(self) -> list[int]:
        """The live processes of this cluster (found by the marker in their environment)."""
        return marked_pids(MARKER, str(self.temp_dir))


def start_ray_cluster(num_cpus: int = 2, env: dict | None = None) -> RayCluster:
    """A head node with `num_cpus` CPUs and the dashboard (Jobs API) on 127.0.0.1, returned once the Jobs API answers."""
    # Short: Ray puts unix sockets under it, and a socket path may not exceed 107 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS))))
    command = [RAY, "start", "--head", "--block", "--num-cpus", str(num_cpus), "--num-gpus", "0",
               "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1", "--include-dashboard", "true",
               "--disable-usage-stats", "--temp-dir", str(temp_dir), "--object-store-memory", str(OBJECT_STORE_BYTES),
               *(str(x) for flag, port in ports.items() for x in (flag, port))]
    log_path = temp_dir / "ray-start.log"
    started = time.monotonic()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**(env or os.environ), MARKER: str(temp_dir)}, start_new_session=True,
                                preexec_fn=_die_with_parent)
    cluster = RayCluster(f"http://127.0.0.1:{ports['--dashboard-port']}", temp_dir, proc, log_path, 0.0)
    try:
        _wait_for_jobs_api(cluster)
    except BaseException:
        stop_ray_cluster(cluster)
        raise
    cluster.start_s = time.monotonic() - started
    return cluster


def _die_with_parent() -> None:
    """In the `ray start` child: SIGKILL it when the test process dies, even SIGKILLed, so no teardown is needed for
    the cluster to go (its own children share its fate; a Ray job's entrypoint is killed with its supervisor)."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _wait_for_jobs_api(cluster: RayCluster) -> None:
    deadline = time.monotonic() + START_WAIT_S
    while time.monotonic() < deadline:
        if cluster.proc.poll() is not None:
            raise RuntimeError(f"`ray start` exited with {cluster.proc.returncode}: {_tail(cluster.log_path)}")
        try:
            with urllib.request.urlopen(f"{cluster.address}/api/jobs/", timeout=5) as response:
                json.load(response)
                return
        except (OSError, ValueError):
            time.sleep(0.5)
    raise RuntimeError(f"the Ray Jobs API at {cluster.address} did not answer within {START_WAIT_S} s: "
                       f"{_tail(cluster.log_path)}")


def stop_ray_cluster(cluster: RayCluster) -> None:
    """Kill every process of the cluster, by pid, and remove its temp dir; AssertionError if one survives.

    SIGKILL, not SIGTERM: `ray start --block` takes about 30 s over a graceful shutdown a throwaway cluster needs
    not; the `ray start` process carries the marker too, and its children share its fate."""
    deadline = time.monotonic() + STOP_WAIT_S
    while (left := cluster.pids()) and time.monotonic() < deadline:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    cluster.proc.wait(STOP_WAIT_S)
    if left:
        raise AssertionError(f"Ray processes outlived their cluster ({cluster.temp_dir}): {left}")
    shutil.rmtree(cluster.temp_dir, ignore_errors=True)


def marked_pids(name: str, value: str) -> list[int]:
    """Live (not zombie) processes of this user whose environment has `name=value`."""
    needle = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0") and not _is_zombie(entry):
                found.append(int(entry.name))
        except OSError:  # gone meanwhile, or another user's
            continue
    return found


def _is_zombie(proc_dir: Path) -> bool:
    stat = (proc_dir / "stat").read_text()
    return stat[stat.rindex(")") + 2] == "Z"


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
