"""Shared wiring of the benchmarks: DynamoDB Local, fresh tables, a simulator in its own process, engines.

Everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

from shopify_pipeline.dynamo.client import dynamodb_client
from shopify_pipeline.dynamo.local import LocalDynamoDB
from shopify_pipeline.dynamo.tables import create_tables
from shopify_pipeline.settings import Settings, ShopifySettings
from shopify_pipeline.sync.engine import SyncEngine, SyncOptions
from shopify_pipeline.sync.service import SyncService


def machine() -> str:
    """nproc, RAM, Python and the date, for RESULTS.md."""
    try:
        mem_kb = int(
            next(
                line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
            ).split()[1]
        )
    except (OSError, StopIteration):
        mem_kb = 0
    date = subprocess.run(["date"], capture_output=True, text=True).stdout.strip()
    return (
        f"nproc={os.cpu_count()} RAM={mem_kb / 1024 / 1024:.1f} GiB Python={platform.python_version()} "
        f"{platform.system()} {platform.machine()} date='{date}'"
    )


def header(name: str) -> None:
    print(f"\n=== {name} ===  [{machine()}]", flush=True)


@contextlib.contextmanager
def dynamodb() -> Iterator[str]:
    """DynamoDB Local's endpoint: $BENCH_DYNAMODB if it names a running one, else one started here."""
    existing = os.environ.get("BENCH_DYNAMODB")
    if existing:
        yield existing
        return
    with LocalDynamoDB() as server:
        yield server.endpoint_url


def fresh_settings(endpoint: str, **changes) -> Settings:
    """Settings with a unique table prefix whose tables exist."""
    from dataclasses import replace

    settings = Settings.from_env({"AWS_ENDPOINT_URL_DYNAMODB": endpoint}).with_prefix(f"b{uuid.uuid4().hex[:6]}_")
    if changes:
        settings = replace(settings, **changes)
    create_tables(dynamodb_client(settings), settings.tables)
    return settings


def shopify_settings(**changes) -> ShopifySettings:
    return ShopifySettings(allow_local_shops=True, **changes)


def service_for(
    settings: Settings,
    shopify: ShopifySettings,
    options: SyncOptions | None = None,
    connections: dict[str, tuple[str, str]] | None = None,
) -> SyncService:
    """A SyncService with `connections` (user → (shop url, token)) added."""
    service = SyncService(SyncEngine(settings, shopify, options or SyncOptions()))
    for user, (url, token) in (connections or {}).items():
        service.add_connection(user, url, f"literal:{token}")
    return service


class RemoteSimulator:
    """`shopify-pipeline simulator` in a child process (its CPU and memory are not ours), driven through
    its admin API. `shops` are ShopConfig fields as JSON."""

    def __init__(self, shops: list[dict], time_scale: float = 1.0) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="bench-sim-")
        config = Path(self._dir.name) / "shops.json"
        config.write_text(json.dumps({"port": 0, "time_scale": time_scale, "shops": shops}))
        self.tokens = {shop["name"]: shop["token"] for shop in shops}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "shopify_pipeline.cli", "simulator", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 120
        self.base_url = ""
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError("the simulator exited before it printed its URL")
            if line.startswith("Shopify simulator at "):
                self.base_url = line.split()[3]
                break
        if not self.base_url:
            raise RuntimeError("the simulator did not start")

    def __enter__(self) -> RemoteSimulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._dir.cleanup()

    def shop_url(self, shop: str) -> str:
        return f"{self.base_url}/shops/{shop}"

    def _call(self, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.base_url}/_simulator/shops/{path}",
            data=data,
            headers={"Content-Type": "application/json"},
            method="GET" if body is None else "POST",
        )
        with urllib.request.urlopen(request, timeout=120) as answer:
            return json.loads(answer.read())

    def stats(self, shop: str) -> dict:
        return self._call(f"{shop}/stats")

    def set_state(self, shop: str, state: str) -> None:
        self._call(f"{shop}/state", {"state": state})

    def update_records(self, shop: str, data_type: str, n: int, seed: int = 1) -> list[int]:
        return self._call(f"{shop}/records/{data_type}/update", {"n": n, "seed": seed})["ids"]

    def rss_kb(self) -> int:
        return _vm_hwm(self.process.pid)


def _vm_hwm(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_rss_kb() -> int:
    """This process's peak resident set (KB)."""
    return max(_vm_hwm(os.getpid()), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def table(rows: list[dict], columns: list[str]) -> str:
    """A markdown table of `rows`."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)
