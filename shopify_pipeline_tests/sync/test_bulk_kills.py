"""A bulk full sync killed with SIGKILL at ten seeded random moments across its four phases, then run again (#13).

Each case starts a real sync process (all three data types, each through one bulk operation; its DynamoDB
requests through a proxy) and kills it at one moment seen from inside the simulator or the proxy, so the
moment is exact rather than slept to:

- create: as it asks Shopify to start the operation (none is started); just after Shopify started it, before
  the answer arrives (the id is lost; the operation is held RUNNING until the rerun looks for it); at the first
  poll after the id was saved;
- poll: at the first poll that finds the operation RUNNING with at least a fraction of its objects;
- download: once the simulator has sent a fraction of the result file; once the first bulk page is staged but
  the checkpoint not saved after it; once the checkpoint saved the offset after that page;
- load: once one chosen batch of the load reached DynamoDB, before its answer.

The rerun (`auto`, as an operator or Dagster runs it) must finish through the bulk path (no fallback to pages),
store exactly the simulator's documents for every data type, count the killed data type's records exactly,
read its result once from the saved offset, and create no bulk operation beyond the one per data type: it
polls or adopts the killed run's operation instead of starting another. One more case kills just after the
start and runs again only once that operation has completed: the rerun must use its result all the same.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from shopify_pipeline.dynamo.pages import page_number
from shopify_pipeline.settings import DATA_TYPES, Settings
from shopify_pipeline.shopify.sources import NESTED, bulk_listing_query, bulk_listing_type
from shopify_pipeline.simulator import ShopConfig, Simulator
from shopify_pipeline.simulator.bulk import Operation, ShopBulk
from shopify_pipeline.simulator.config import BulkConfig
from shopify_pipeline.simulator.server import RequestHandler
from shopify_pipeline.sync.bulk_fetch import BULK_SLICE, PAGE_RECORDS
from shopify_pipeline.sync.engine import SyncEngine, SyncOptions
from shopify_pipeline.sync.service import SyncService
from shopify_pipeline_tests.support.dynamo_fault_proxy import DynamoFaultProxy
from shopify_pipeline_tests.support.graphql_truth import graphql_truth
from shopify_pipeline_tests.sync.conftest import FAST_SHOPIFY, stored

USER = "bulk-user"
# Each data type over one staged page (250 records); two orders and two products with nested items past one page.
SHOP = ShopConfig("kill", "shpat_kill", orders=260, products=260, customers=260, seed=17, plan="plus",
                  large_order_every=130, large_order_line_items=300, large_product_every=130,
                  large_product_variants=260,
                  # At time_scale 50: CREATED for 0.2 s, then about 1 000 objects a second (customers 0.5 s,
                  # orders 1.6 s), long enough for several polls of each operation while it runs.
                  bulk=BulkConfig(created_seconds=10, objects_per_second=20))
OPTIONS = {"slices": 2, "min_records_to_slice": 100, "bulk_threshold": 50, "bulk_poll": (0.05, 0.2, 60.0)}
BATCH_RECORDS = Settings().batch_size

# `shopify-pipeline sync` takes no bulk options from the environment (SyncService.from_env() uses SyncOptions'
# defaults: a 10 000-record threshold, polls from 1 s up to 30 s), so the process makes the CLI's service call
# with the options above.
CHILD = """
import json, sys, time
from shopify_pipeline.settings import Settings, ShopifySettings
from shopify_pipeline.sync.engine import SyncEngine, SyncOptions
from shopify_pipeline.sync.service import SyncService
options = json.loads(sys.argv[1])
options["bulk_poll"] = tuple(options["bulk_poll"])
shopify = ShopifySettings(allow_local_shops=True, backoff_seconds=0.01, timeout_seconds=5.0)
service = SyncService(SyncEngine(Settings.from_env(), shopify, SyncOptions(**options)))
started = time.monotonic()
progress = lambda message: print(f"{time.monotonic() - started:6.2f} {message}", flush=True)
result = service.sync(sys.argv[2], sys.argv[3], progress=progress)
print(json.dumps({k: v.__dict__ for k, v in result.data_types.items()}, default=str))
sys.exit(0 if result.success else 1)
"""


def _batches(records: int) -> int:
    """How many BatchWriteItem requests the load of `records` makes: each staged page in batches of 25."""
    full, rest = divmod(records, PAGE_RECORDS)
    return full * math.ceil(PAGE_RECORDS / BATCH_RECORDS) + math.ceil(rest / BATCH_RECORDS)


@dataclass(frozen=True)
class KillPoint:
    """Where a sync is killed: a phase, a moment in it, the data type whose bulk fetch it is in, and how far in:
    a fraction of the operation's objects (poll), of the result file (download, reading) or of the batches
    of the load (load)."""

    phase: str
    moment: str
    data_type: str
    fraction: float = 0.0

    @property
    def batch(self) -> int:
        """Load: the batch after which the process is killed (1 = the first)."""
        return 1 + int(self.fraction * (_batches(getattr(SHOP, self.data_type)) - 1))

    def __str__(self) -> str:
        where = {("poll", "running"): f"-at-{self.fraction:.0%}-of-objects",
                 ("download", "reading"): f"-at-{self.fraction:.0%}-of-file",
                 ("load", "writing"): f"-after-batch-{self.batch}-of-{_batches(getattr(SHOP, self.data_type))}"}
        return f"{self.phase}-{self.moment}-{self.data_type}{where.get((self.phase, self.moment), '')}"


# Phases and moments are fixed, so that each is covered; data types and how far in are drawn from the seed.
# download: page-staged is page 1 in DynamoDB with the checkpoint still at offset 0; offset-saved is the
# checkpoint saved after it (the rerun reads on with Range).
PLAN = (("create", "before-start"), ("create", "id-lost"), ("create", "id-saved"), ("poll", "running"),
        ("poll", "running"), ("download", "reading"), ("download", "page-staged"), ("download", "offset-saved"),
        ("load", "writing"), ("load", "writing"))
FRACTIONS = {("poll", "running"): (0.1, 0.4), ("download", "reading"): (0.0, 0.9), ("load", "writing"): (0.0, 1.0)}
SEED = 1302


def kill_points(seed: int = SEED) -> list[KillPoint]:
    """The ten kill points of `seed`, reproducible. Data types come from a shuffled even pool, and the n points
    of one moment draw how far in from n equal parts of its range, so both spread."""
    rng = random.Random(seed)
    data_types = list(DATA_TYPES) * 4
    rng.shuffle(data_types)  # ten of these twelve: each data type at least twice
    points: list[KillPoint] = []
    for (phase, moment), data_type in zip(PLAN, data_types[:len(PLAN)], strict=True):
        low, high = FRACTIONS.get((phase, moment), (0.0, 0.0))
        part = sum((p.phase, p.moment) == (phase, moment) for p in points)
        step = (high - low) / PLAN.count((phase, moment))
        fraction = rng.uniform(low + part * step, low + (part + 1) * step)
        points.append(KillPoint(phase, moment, data_type, round(fraction, 2)))
    return points


POINTS = kill_points()
# A shop of its own for each case (the same seed, so the same records): no case sees another's operations.
SHOPS = [replace(SHOP, name=f"kill{i}", token=f"shpat_kill{i}") for i in range(len(POINTS) + 1)]


@pytest.fixture(scope="module")
def sim():
    with Simulator(SHOPS, time_scale=50) as running:
        yield running


@pytest.fixture(scope="module")
def truth(sim) -> dict[str, dict[int, dict]]:
    """The documents of each data type in every shop of the module (none of them changes)."""
    return {data_type: graphql_truth(sim, SHOPS[0].name, data_type) for data_type in DATA_TYPES}


class WatchedProxy(DynamoFaultProxy):
    """The DynamoDB proxy, calling `forwarded(target, body)` once a request reached DynamoDB, before the answer
    goes back to the client."""

    forwarded: Callable[[str, bytes], None] | None = None

    def _forward(self, handler, body: bytes):
        # The answer goes out as two writes (headers, body): with Nagle on, each request waits for a delayed ACK.
        handler.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        answer = super()._forward(handler, body)
        if self.forwarded is not None:
            self.forwarded(handler.headers.get("X-Amz-Target") or "", body)
        return answer


@pytest.fixture(scope="module")
def proxy(dynamodb_endpoint):
    with WatchedProxy(dynamodb_endpoint) as running:
        yield running


def _wait_dead(pid: int, seconds: float = 5.0) -> None:
    """Return once `pid` has died (a zombie or reaped), so the answer a hook sends next reaches no one."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rpartition(")")[2].split()[0] in ("Z", "X"):
                    return
        except FileNotFoundError:
            return
        time.sleep(0.001)
    raise AssertionError(f"process {pid} is still alive {seconds} s after SIGKILL")


class Killer:
    """Kills the sync process once, at its point, from the hook that sees that moment; `seen` says what the hook
    saw then. For an id lost at creation it also holds that operation's export until the rerun looks for it."""

    def __init__(self, point: KillPoint, shop: str, truth: dict[str, dict[int, dict]], hold: bool = True) -> None:
        self.point, self.shop = point, shop
        self.query = bulk_listing_query(point.data_type, {})
        self.objects = sum(1 + len(doc[NESTED[point.data_type][0]]["nodes"])
                           for doc in truth[point.data_type].values())  # JSONL lines: what objectCount counts
        self.process: subprocess.Popen | None = None
        self.seen: str | None = None
        self.hold = hold and point.moment == "id-lost"
        self.release = threading.Event()
        self.batches = 0
        self.ranges: list[str | None] = []  # the Range of each download of the data type's result after the kill
        self._lock = threading.Lock()

    def kill(self, seen: str) -> None:
        with self._lock:
            if self.seen is not None or self.process is None:
                return
            self.seen = seen
            os.kill(self.process.pid, signal.SIGKILL)
            _wait_dead(self.process.pid)

    def count_batch(self) -> int:
        with self._lock:
            self.batches += 1
            return self.batches


def _install(monkeypatch, sim: Simulator, proxy: WatchedProxy, killer: Killer, settings: Settings) -> None:
    """Hooks in the simulator (start, poll, export, download) and the proxy (staged page, checkpoint, load) that
    call the killer."""
    point = killer.point
    real_run, real_find = ShopBulk.run_query, ShopBulk.find
    real_write, real_download = Operation._write, RequestHandler._bulk_download

    def run_query(self, query, group_objects, api_version, scopes):
        if query != killer.query or point.phase != "create":
            return real_run(self, query, group_objects, api_version, scopes)
        if killer.seen is not None:
            killer.release.set()  # the rerun did not adopt the held operation: let it end
            return real_run(self, query, group_objects, api_version, scopes)
        if point.moment == "before-start":
            killer.kill("asked to start the operation; Shopify started none")
            return {"bulkOperation": None, "userErrors": []}
        answer = real_run(self, query, group_objects, api_version, scopes)
        if point.moment == "id-lost":
            killer.kill(f"Shopify started {answer['bulkOperation']['id']}; its answer was never read")
        return answer

    def find(self, operation_id):
        found = real_find(self, operation_id)
        if found is None or found["query"] != killer.query:
            return found
        if killer.seen is not None:
            killer.release.set()  # the rerun polls the held operation: let it run
        elif point.moment == "id-saved":
            killer.kill(f"first poll of {found['id']}: {found['status']}")
        elif point.phase == "poll" and found["status"] == "RUNNING" and (
                int(found["objectCount"]) >= point.fraction * killer.objects):
            killer.kill(f"poll of {found['id']}: RUNNING, {found['objectCount']} of {killer.objects} objects")
        return found

    def write(self):
        if killer.hold and self.query == killer.query:
            killer.release.wait(60)
        real_write(self)

    def bulk_download(self, token, signature):
        operation = next((doc for doc in sim.bulk_operations(killer.shop)
                          if doc["url"] and f"/bulk/{token}.jsonl" in doc["url"]), None)
        if operation is not None and operation["query"] == killer.query:
            if killer.seen is not None:
                killer.ranges.append(self.headers.get("Range"))
            elif (point.phase, point.moment) == ("download", "reading"):
                size = int(operation["fileSize"])
                limit = int(point.fraction * size)
                self.wfile = _CutAt(self.wfile, limit, lambda: killer.kill(
                    f"{limit} of {size} bytes of the result of {operation['id']} sent"))
        real_download(self, token, signature)

    tables = settings.tables
    first_page = str(page_number(BULK_SLICE, 1))

    def forwarded(target: str, body: bytes) -> None:
        if killer.seen is not None or point.phase not in ("download", "load"):
            return
        operation = target.rpartition(".")[2]
        if point.phase == "load":
            if operation == "BatchWriteItem" and tables.records(point.data_type) in json.loads(body)["RequestItems"] \
                    and killer.count_batch() == point.batch:
                killer.kill(f"batch {point.batch} of the load of {point.data_type} written; its answer never read")
            return
        for table, item in _puts(operation, body):
            if point.moment == "page-staged" and table == tables.pages and item["page"]["N"] == first_page \
                    and f"#{point.data_type}#" in item["syncKey"]["S"]:
                killer.kill("bulk page 1 staged; the checkpoint not saved after it")
            elif point.moment == "offset-saved" and table == tables.checkpoints and "state" in item \
                    and item["dataType"]["S"] == point.data_type \
                    and json.loads(item["state"]["S"]).get("bulk", {}).get("pages") == 1:
                killer.kill("the checkpoint saved after bulk page 1")

    monkeypatch.setattr(ShopBulk, "run_query", run_query)
    monkeypatch.setattr(ShopBulk, "find", find)
    monkeypatch.setattr(Operation, "_write", write)
    monkeypatch.setattr(RequestHandler, "_bulk_download", bulk_download)
    monkeypatch.setattr(proxy, "forwarded", forwarded)


def _puts(operation: str, body: bytes) -> list[tuple[str, dict]]:
    """(table, item) of each item a DynamoDB request puts: PutItem, or the Put of a fenced TransactWriteItems."""
    if operation == "PutItem":
        request = json.loads(body)
        return [(request["TableName"], request["Item"])]
    if operation == "TransactWriteItems":
        return [(write["Put"]["TableName"], write["Put"]["Item"]) for write in json.loads(body)["TransactItems"]
                if "Put" in write]
    return []


class _CutAt:
    """A handler's output that calls `at_limit` once `limit` bytes of the body (the writes after the headers)
    went out, and drops the rest: its reader is dead by then."""

    def __init__(self, out, limit: int, at_limit: Callable[[], None]) -> None:
        self._out, self._left, self._at_limit = out, limit, at_limit
        self._headers_sent = self._cut = False

    def write(self, data: bytes) -> int:
        if self._cut:
            return len(data)
        if not self._headers_sent:
            self._headers_sent = True
            return self._out.write(data)
        if len(data) < self._left:
            self._left -= len(data)
            return self._out.write(data)
        self._out.write(data[: self._left])
        self._out.flush()
        self._cut = True
        self._at_limit()
        return len(data)

    def __getattr__(self, name: str):
        return getattr(self._out, name)


def _sync_process(settings: Settings, endpoint: str, sync_type: str, log: Path) -> subprocess.Popen:
    """A sync of every data type of USER in a process of its own, on the test's tables through `endpoint`."""
    prefix = settings.tables.checkpoints.removesuffix("sync_checkpoints")
    environ = {**os.environ, "AWS_ENDPOINT_URL_DYNAMODB": endpoint, "SHOPIFY_PIPELINE_TABLE_PREFIX": prefix}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(OPTIONS), USER, sync_type], env=environ,
                                stdout=out, stderr=subprocess.STDOUT)


def _operations_created(sim: Simulator, shop: str) -> Counter:
    """The shop's bulk operations, counted by the data type they export."""
    return Counter(bulk_listing_type(doc["query"]) or doc["query"] for doc in sim.bulk_operations(shop))


def _where(engine: SyncEngine, data_type: str) -> dict:
    """The killed data type's checkpoint: its bulk entry and whether the fetch was done."""
    checkpoint = engine.state.load_checkpoint(USER, "initial", data_type)
    if checkpoint is None:
        return {"checkpoint": None}
    bulk = checkpoint.state.get("bulk") or {}
    return {**{key: bulk.get(key) for key in ("operation", "offset", "pages", "records", "done")},
            "fetch_done": checkpoint.state.get("fetch_done")}


def _landed(point: KillPoint, where: dict, created: Counter) -> bool:
    """Whether the checkpoint and the shop's operations at the kill are those of the point's moment."""
    started = created[point.data_type]
    if point.moment in ("before-start", "id-lost"):
        return where.get("operation", "") is None and started == (point.moment == "id-lost")
    if point.phase == "load":
        return where.get("done") is True and where.get("fetch_done") is True and started == 1
    fetching = bool(where.get("operation")) and where["done"] is False and started == 1
    if point.moment == "offset-saved":
        return fetching and where["pages"] == 1 and where["offset"] > 0
    return fetching and (point.moment == "reading" or where["pages"] == 0)


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def _kill_then_rerun(point: KillPoint, shop: ShopConfig, settings, sim, proxy, truth, monkeypatch, tmp_path,
                     before_rerun: Callable[[], None] | None = None) -> None:
    """Kill a sync at `point`, check where it stopped, run the sync again to its end (after `before_rerun`), and
    check what it stored, how it read the result and how many operations it took."""
    engine = SyncEngine(settings, FAST_SHOPIFY, SyncOptions(**OPTIONS))
    service = SyncService(engine)
    service.add_connection(USER, sim.shop_url(shop.name), f"literal:{shop.token}")
    killer = Killer(point, shop.name, truth, hold=before_rerun is None)
    _install(monkeypatch, sim, proxy, killer, settings)
    killed_log, rerun_log = tmp_path / "killed.log", tmp_path / "rerun.log"
    try:
        killer.process = _sync_process(settings, proxy.endpoint_url, "initial", killed_log)
        code = killer.process.wait(timeout=60)
        assert killer.seen is not None, f"{point}: never killed; the sync ended with {code}\n{_tail(killed_log)}"
        assert code == -signal.SIGKILL
        where = _where(engine, point.data_type)
        story = f"{point}: killed at {killer.seen}; checkpoint then {where}"
        print(story)
        assert _landed(point, where, _operations_created(sim, shop.name)), story
        if before_rerun is not None:
            before_rerun()
        # The killed process keeps its leases until they expire; the runbook's `clear --release-lease` hands
        # them over at once.
        service.clear_sync_status(USER, release_lease=True)
        rerun = _sync_process(settings, settings.dynamodb_endpoint_url, "auto", rerun_log)
        assert rerun.wait(timeout=90) == 0, f"{story}\nthe rerun failed:\n{_tail(rerun_log)}"
    finally:
        killer.release.set()
        if killer.process is not None and killer.process.poll() is None:
            killer.process.kill()
    # Through the bulk operation to the end: a fallback to pages would also store everything.
    assert "fetching by pages instead" not in killed_log.read_text() + rerun_log.read_text(), story
    for data_type in DATA_TYPES:
        assert stored(service, USER, data_type) == truth[data_type], f"{story}\n{data_type} differ"
    statuses = engine.state.get_status(USER)
    for data_type in DATA_TYPES[DATA_TYPES.index(point.data_type):]:  # finished by the rerun's initial sync
        status = statuses[data_type]
        assert (status["status"], status["syncType"], status["recordCount"]) == (
            "completed", "initial", len(truth[data_type])), f"{story}\n{data_type}: {status}"
    created = _operations_created(sim, shop.name)
    assert created == Counter(DATA_TYPES), f"{story}\nbulk operations created: {dict(created)}"
    # The rerun read the killed data type's result once, from the offset the checkpoint saved (none if loaded).
    resume = [] if where.get("done") else [f"bytes={where['offset']}-" if where["offset"] else None]
    assert killer.ranges == resume, f"{story}\nthe rerun's downloads: {killer.ranges}"


@pytest.mark.parametrize(("point", "shop"), zip(POINTS, SHOPS, strict=False), ids=[str(p) for p in POINTS])
def test_a_bulk_sync_killed_anywhere_finishes_on_rerun_with_one_operation_per_data_type(
        point, shop, settings, sim, proxy, truth, monkeypatch, tmp_path):
    _kill_then_rerun(point, shop, settings, sim, proxy, truth, monkeypatch, tmp_path)


def test_a_rerun_after_the_lost_operation_ended_uses_its_result(settings, sim, proxy, truth, monkeypatch,
                                                               tmp_path):
    # The run died between Shopify starting the operation and saving its id, and the rerun comes only after the
    # operation completed (a retry minutes later, a small export): its result is as new as the sync's start.
    point = KillPoint("create", "id-lost", "customers")

    shop = SHOPS[-1]

    def until_completed() -> None:
        deadline = time.monotonic() + 30
        while sim.bulk_operations(shop.name)[-1]["status"] != "COMPLETED":
            assert time.monotonic() < deadline
            time.sleep(0.05)

    _kill_then_rerun(point, shop, settings, sim, proxy, truth, monkeypatch, tmp_path, before_rerun=until_completed)
