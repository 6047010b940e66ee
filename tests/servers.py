"""Real servers for the team tests, each on loopback (127.0.0.1) only, on ports free at start, in a
temporary folder: PostgreSQL, SeaweedFS (S3), and the team's MLflow server (team/mlflow_server.sh).
Each is stopped by its own process id, never by name: another checkout may run the same tests."""

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from tests.conftest import PROJECT, user_env

S3_KEY, S3_SECRET, BUCKET = "vaelab-tests", "vaelab-tests-secret", "mlflow"


def free_port(also_free_at: int = 0) -> int:
    """A TCP port free on 127.0.0.1 now (and, if asked, with port + also_free_at free too)."""
    while True:
        port = _bind(0)
        if not also_free_at or (port + also_free_at <= 65535 and _bind(port + also_free_at)):
            return port


def _bind(port: int) -> int:
    """The port bound (0: any free one), or 0 if it is taken."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return 0
        return s.getsockname()[1]


def wait_for(check, what: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{what} did not start within {seconds} s")


def answers(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status == 200


def stop(process: subprocess.Popen) -> None:
    """End a server this module started, and everything it started, by its process group id."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


class Postgres:
    """A PostgreSQL cluster of its own: initdb in a temporary folder, as the postgres user when run as root."""

    def __init__(self):
        binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or [shutil.which("initdb")]
        if not binaries[-1]:
            pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql; .ci/run does)")
        self.bin = Path(binaries[-1]).parent
        self.folder = Path(tempfile.mkdtemp(prefix="vaelab-postgres-"))
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.folder, "postgres")
        self.port = free_port()
        self.data = self.folder / "data"
        self._postgres(["initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust"])
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        self._postgres(["pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.folder / "log"), "-w", "start"])
        try:
            self._postgres(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-c", "CREATE DATABASE mlflow"])
        except BaseException:
            self.close()
            raise
        self.uri = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/mlflow"

    def _postgres(self, command: list[str]) -> None:
        command = [*self.as_user, str(self.bin / command[0]), *command[1:]]
        subprocess.run(command, check=True, capture_output=True, cwd=self.folder)

    def close(self) -> None:
        self._postgres(["pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop"])
        shutil.rmtree(self.folder, ignore_errors=True)


class SeaweedS3:
    """SeaweedFS's `weed mini`: a real S3 server, every component on its own free loopback port."""

    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix="vaelab-seaweed-"))
        # each component's gRPC port is its HTTP port + 10000
        ports = {name: free_port(also_free_at=10000) for name in ("master", "volume", "filer", "s3", "admin")}
        self.endpoint = f"http://127.0.0.1:{ports['s3']}"
        weed = Path(sys.executable).parent / "weed"
        command = [str(weed if weed.exists() else "weed"), "mini", f"-dir={self.folder}", "-ip=127.0.0.1",
                   "-ip.bind=127.0.0.1", "-master.telemetry=false", "-webdav=false", "-s3.port.iceberg=0",
                   "-s3.port.lance=0", f"-bucket={BUCKET}", *(f"-{name}.port={port}" for name, port in ports.items())]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET}
        log = open(self.folder / "log", "wb")
        self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(lambda: BUCKET in self.buckets(), "SeaweedFS's S3 with its bucket")
        except BaseException:
            self.close()
            raise

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=S3_KEY,
                            aws_secret_access_key=S3_SECRET, region_name="us-east-1")

    def buckets(self) -> list[str]:
        if self.process.poll() is not None:
            raise AssertionError(f"weed mini exited: {(self.folder / 'log').read_text()[-2000:]}")
        try:
            return [b["Name"] for b in self.client().list_buckets()["Buckets"]]
        except Exception:
            return []

    def keys(self) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def close(self) -> None:
        stop(self.process)
        shutil.rmtree(self.folder, ignore_errors=True)


class TeamServer:
    """The team's MLflow server, started as README says: team/mlflow_server.sh on PostgreSQL and S3."""

    def __init__(self, postgres: Postgres, s3: SeaweedS3):
        self.postgres, self.s3 = postgres, s3
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = Path(tempfile.mkstemp(prefix="vaelab-mlflow-server-", suffix=".log")[1])
        self.start_seconds = self.start()

    def start(self) -> float:
        """Start the server; return the seconds until it answered /health."""
        env = user_env({
            "VAELAB_DB_URI": self.postgres.uri,
            "VAELAB_ARTIFACTS": f"s3://{BUCKET}/artifacts",
            "AWS_ACCESS_KEY_ID": S3_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET,
            "MLFLOW_S3_ENDPOINT_URL": self.s3.endpoint,
        })
        started = time.monotonic()
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                ["bash", str(PROJECT / "team/mlflow_server.sh"), "--port", str(self.port), "--workers", "1"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        try:
            wait_for(self._healthy, "the MLflow server")
        except BaseException:
            self.close()
            raise
        return time.monotonic() - started

    def _healthy(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"mlflow server exited: {self.log.read_text()[-3000:]}")
        return answers(f"{self.uri}/health")

    def close(self) -> None:
        stop(self.process)


@contextmanager
def team_server():
    """PostgreSQL, SeaweedFS and the team's MLflow server on them; whatever started is stopped on
    leaving, even if a later server fails to start."""
    with ExitStack() as started:
        postgres = Postgres()
        started.callback(postgres.close)
        s3 = SeaweedS3()
        started.callback(s3.close)
        server = TeamServer(postgres, s3)
        started.callback(server.close)
        yield server
