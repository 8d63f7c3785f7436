"""`shopify-pipeline demo`: the whole pipeline on one machine, nothing to configure.

Starts DynamoDB Local (data kept in `.demo/dynamodb`) and the Shopify simulator with three demo shops —
one healthy, one rate-limited and flaky, one whose token was revoked — registers a user for each,
materializes every user's assets through Dagster (instance in `.dagster_home`), and prints what happened.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from shopify_pipeline.dynamo.client import dynamodb_client
from shopify_pipeline.dynamo.local import LocalDynamoDB
from shopify_pipeline.dynamo.tables import create_tables
from shopify_pipeline.settings import Settings, ShopifySettings
from shopify_pipeline.simulator import FaultConfig, ShopConfig, Simulator
from shopify_pipeline.sync.engine import SyncEngine
from shopify_pipeline.sync.service import SyncService

DEMO_DIR = Path(".demo")
DAGSTER_HOME = Path(".dagster_home")


@dataclass(frozen=True)
class DemoUser:
    user_id: str
    shop: ShopConfig
    token: str  # what the user's connection holds (the revoked shop's differs from the shop's token)
    story: str


def demo_users(orders: int) -> list[DemoUser]:
    healthy = ShopConfig("healthy-goods", "shpat_healthy", orders=orders, products=80, customers=300, seed=1,
                         plan="advanced", large_order_every=997)
    flaky = ShopConfig("flaky-threads", "shpat_flaky", orders=max(orders // 2, 300), products=40, customers=150,
                       seed=2, plan="standard",
                       faults=FaultConfig(seed=2, error_503_rate=0.04, reset_rate=0.02, error_500_rate=0.04,
                                          latency_seconds=0.02))
    revoked = ShopConfig("revoked-access", "shpat_current", orders=50, seed=3)
    return [
        DemoUser("alice", healthy, "shpat_healthy", "a healthy shop"),
        DemoUser("bob", flaky, "shpat_flaky", "rate-limited and flaky (503s, resets, 500s)"),
        DemoUser("carol", revoked, "shpat_revoked_long_ago", "the merchant revoked the app's token"),
    ]


@contextmanager
def local_stack(orders: int, time_scale: float = 10.0, quiet: bool = False):
    """DynamoDB Local + the simulator + tables + the demo users' connections; yields (settings, users)."""
    users = demo_users(orders)
    with ExitStack() as stack:
        DEMO_DIR.mkdir(exist_ok=True)
        if not quiet:
            print("Starting DynamoDB Local (data in .demo/dynamodb) and the Shopify simulator...", flush=True)
        dynamodb = stack.enter_context(LocalDynamoDB(data_dir=(DEMO_DIR / "dynamodb").resolve()))
        simulator = stack.enter_context(Simulator([u.shop for u in users], time_scale=time_scale))
        os.environ.update({
            "AWS_ENDPOINT_URL_DYNAMODB": dynamodb.endpoint_url,
            "SHOPIFY_ALLOW_LOCAL_SHOPS": "1",
            "DAGSTER_HOME": str(DAGSTER_HOME.resolve()),
        })
        settings = Settings.from_env()
        create_tables(dynamodb_client(settings), settings.tables)
        service = SyncService(SyncEngine(settings, ShopifySettings.from_env()))
        for user in users:
            service.add_connection(user.user_id, simulator.shop_url(user.shop.name), f"literal:{user.token}",
                                   api="graphql")
        if not quiet:
            print(f"  DynamoDB Local: {dynamodb.endpoint_url}\n  simulator:      {simulator.base_url}", flush=True)
        yield settings, users, simulator


def prepare_dagster_home() -> None:
    """$DAGSTER_HOME with the shipped dagster.yaml (one run per user at a time, the Shopify pool)."""
    DAGSTER_HOME.mkdir(exist_ok=True)
    shipped = Path(__file__).resolve().parent.parent / "dagster.yaml"
    target = DAGSTER_HOME / "dagster.yaml"
    if shipped.exists() and (not target.exists() or target.read_bytes() != shipped.read_bytes()):
        shutil.copyfile(shipped, target)  # the shipped file is the demo's instance config: keep it current


def run_demo(orders: int = 2000, keep_running: bool = False) -> int:
    from shopify_pipeline.demo_runner import materialize_user, summary_lines

    with local_stack(orders) as (settings, users, _simulator):
        prepare_dagster_home()
        outcomes = []
        for user in users:
            print(f"\n▶ {user.user_id} ({user.shop.name}: {user.story})", flush=True)
            outcomes.append(materialize_user(user.user_id, settings))
        print("\n" + "\n".join(summary_lines(outcomes, settings)))
        if keep_running:
            print("\nDynamoDB Local and the simulator keep running; Ctrl-C stops them.", flush=True)
            stopped = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stopped.set())
            with contextlib.suppress(KeyboardInterrupt):
                stopped.wait()
    return 0


def run_ui(orders: int = 2000, port: int = 3000) -> int:
    """`dagster dev` on the demo's state, with DynamoDB Local and the simulator running beside it."""
    with local_stack(orders) as _:
        prepare_dagster_home()
        print(f"Starting the Dagster UI at http://127.0.0.1:{port} (Ctrl-C stops everything)...", flush=True)
        # Run from $DAGSTER_HOME: dagster dev warns about (and ignores) a dagster.yaml in any other folder.
        workspace = Path(__file__).resolve().parent.parent / "workspace.yaml"
        process = subprocess.Popen(["dagster", "dev", "-w", str(workspace), "-p", str(port)], env=os.environ,
                                   cwd=DAGSTER_HOME.resolve())
        try:
            return process.wait()
        except KeyboardInterrupt:
            process.send_signal(signal.SIGINT)
            return process.wait()
