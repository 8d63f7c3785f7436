"""A local Secrets Manager for the demo and the tests: moto in standalone server mode, a real HTTP endpoint
that boto3 talks to (AWS ships no local Secrets Manager, as it does DynamoDB Local).

    with LocalSecretsManager() as server:
        client = server.client()   # or AWS_ENDPOINT_URL_SECRETS_MANAGER=server.endpoint_url for any process

Production uses AWS Secrets Manager: the same boto3 code without the endpoint.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from shopify_pipeline.errors import PermanentError

REGION = "us-east-1"


class LocalSecretsManagerError(PermanentError):
    """The local Secrets Manager could not be started; the message says what to do."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LocalSecretsManager:
    """moto's server on a free loopback port, for as long as the `with` block runs."""

    def __init__(self, port: int | None = None, start_timeout: float = 30.0) -> None:
        self.port = port or _free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.start_timeout = start_timeout
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> LocalSecretsManager:
        try:
            import moto.server  # noqa: F401 - only to say what is missing
        except ImportError:
            raise LocalSecretsManagerError("the local Secrets Manager needs moto's server: "
                                           "`pip install 'moto[server]'` (make setup installs it)") from None
        self._process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise LocalSecretsManagerError(f"moto's server exited at start (code {self._process.returncode})")
            try:
                with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1):
                    return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.__exit__()
        raise LocalSecretsManagerError(f"moto's server did not answer on {self.endpoint_url} within "
                                       f"{self.start_timeout:.0f} s")

    def __exit__(self, *exc: object) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
        self._process = None

    def env(self) -> dict[str, str]:
        """The environment that points another process's boto3 at this server."""
        return {"AWS_ENDPOINT_URL_SECRETS_MANAGER": self.endpoint_url, "AWS_DEFAULT_REGION": REGION,
                "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local"}  # moto checks none

    def client(self):
        """A boto3 Secrets Manager client of this server (dummy credentials: moto checks none)."""
        import boto3

        return boto3.client("secretsmanager", endpoint_url=self.endpoint_url, region_name=REGION,
                            aws_access_key_id="local", aws_secret_access_key="local")
