"""A real S3-compatible server for the tests: moto's standalone server (``python -m moto.server``) in a subprocess
on 127.0.0.1, started and stopped by the session fixture ``s3_server`` (tests/conftest.py).

Ray workers resolve ``s3://`` URIs from their own environment (stethoscope.storage), and an embedded Ray hands the
driver's environment to its workers only when it starts. So the server's port and the (fake, moto-only)
credentials are put into ``os.environ`` when conftest is imported, before any test starts Ray
(:func:`configure_environment`); the server itself starts only when a test asks for it.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

#: moto accepts any key; these never reach a real AWS account (AWS_ENDPOINT_URL points every request at moto).
TEST_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "stethoscope-test",
    "AWS_SECRET_ACCESS_KEY": "stethoscope-test",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # never ask an instance metadata service for a role
}


#: Where the server's port is drawn from: below Linux's ephemeral range (32768-60999 by default), which the OS hands
#: out to every socket bound to port 0 (Ray's GCS clients, object managers, other tests' free ports), and above
#: Ray's worker ports (10002-19999 by default). The port is chosen when conftest is imported but bound only when the
#: first S3 test starts the server, possibly half an hour later: a port from the ephemeral range was taken in
#: between once (moto could not bind, and the port answered with gRPC bytes).
PORT_RANGE = (20000, 32000)


def reserve_port() -> int:
    """A TCP port in :data:`PORT_RANGE` free on 127.0.0.1 now (the server binds it later; a clash is reported by
    :meth:`MotoS3.start`)."""
    import random

    rng = random.Random(os.getpid())
    for _ in range(200):
        port = rng.randrange(*PORT_RANGE)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free TCP port in {PORT_RANGE} on 127.0.0.1 for the test S3 server")


def configure_environment(port: int) -> None:
    """Point pyarrow's S3 filesystem (driver and every Ray worker started afterwards) at ``127.0.0.1:port``."""
    os.environ.update(TEST_ENVIRONMENT)
    os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{port}"


class MotoS3:
    """moto's S3 server as a child process of the test session.

    Args:
        port: where it listens (127.0.0.1 only). log: its request log file.
    """

    def __init__(self, port: int, log: Path):
        self.port, self.log = port, Path(log)
        self.endpoint = f"http://127.0.0.1:{port}"
        self._proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60.0) -> "MotoS3":
        """Start the server and wait until it answers. Raises RuntimeError (with its log) if it does not."""
        self._fh = open(self.log, "ab")
        self._proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                      stdout=self._fh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2):
                    return self
            except OSError:
                time.sleep(0.2)
            except http.client.HTTPException as exc:  # not an HTTP server: another process holds the port
                self.stop()
                raise RuntimeError(f"port {self.port} answers but not as moto ({exc!r}): another process took it "
                                   f"before the S3 server could bind it; moto's log: {self.log.read_text()[-2000:]}"
                                   ) from None
        self.stop()
        raise RuntimeError(f"moto's S3 server did not start on {self.endpoint}: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        """Stop the server (only the process this object started)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        if getattr(self, "_fh", None) is not None:
            self._fh.close()
            self._fh = None

    def create_bucket(self, prefix: str = "stethoscope") -> str:
        """A new empty bucket (through pyarrow, as a user would); returns ``s3://<name>``."""
        import pyarrow.fs as pafs

        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        pafs.S3FileSystem(endpoint_override=self.endpoint, allow_bucket_creation=True).create_dir(name)
        return f"s3://{name}"
