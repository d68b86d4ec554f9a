"""A real S3-compatible server for the tests: moto's standalone server (``python -m moto.server``) in a subprocess
on 127.0.0.1, started and stopped by the session fixture ``s3_server`` (tests/conftest.py).

Ray workers resolve ``s3://`` URIs from their own environment (stethoscope.storage), and an embedded Ray hands the
driver's environment to its workers only when it starts. So the server's port and the (fake, moto-only)
credentials are put into ``os.environ`` when conftest is imported, before any test starts Ray
(:func:`configure_environment`); the server itself starts only when a test asks for it.
"""

from __future__ import annotations

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


def reserve_port() -> int:
    """A TCP port free on 127.0.0.1 now (the server binds it later; a clash is reported by :meth:`MotoS3.start`)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
