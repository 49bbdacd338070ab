"""A real S3-protocol server for tests and benchmarks: moto's standalone server (`moto_server`) as a process on
127.0.0.1, with the AWS environment variables that point boto3 (and so loradock) at it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 120.0  # a backstop for a server that never comes up, not a measurement


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class S3Server:
    proc: subprocess.Popen
    endpoint: str
    log: Path

    @property
    def env(self) -> dict[str, str]:
        """What a client needs to use this server: endpoint, region and (any) credentials."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "loradock-test",
                "AWS_SECRET_ACCESS_KEY": "loradock-test-secret", "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="loradock-test", aws_secret_access_key="loradock-test-secret")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_s3_server(directory: Path, check_credentials: bool = False) -> S3Server:
    """Start `moto_server` on a free port and wait until it answers. With `check_credentials` it refuses every
    access key it was not told about (moto's IAM checks on from the first request), so any key is refused."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = directory / f"moto-{port}.log"
    env = {**os.environ, **({"INITIAL_NO_AUTH_ACTION_COUNT": "0"} if check_credentials else {})}
    moto = Path(sys.executable).with_name("moto_server")
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=directory)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=5).read()
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto_server did not answer on {endpoint} within {START_TIMEOUT_S:.0f} s")
            time.sleep(0.1)
    return S3Server(proc, endpoint, log)
