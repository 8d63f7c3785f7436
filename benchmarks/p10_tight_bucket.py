"""P10 tight bucket (#16): list requests and seconds of a 1 000-order initial sync where the bucket is tight.

The fake of the issue: a REST bucket of 3 requests leaking 1/s, a 503 every third request (the simulator's
ShopConfig.rest_bucket_size / rest_leak_per_second and FaultRule(every=3)), real time (time_scale 1). The
orders cluster: one created ten years ago, 999 created when the benchmark starts (equal time slices would
be three empty and one full). Every client gets shops of its own (its own bucket and fault counter), the same
data, and runs `REPEATS` times, interleaved with the others.

Rows:
- engine: SyncEngine's initial sync of orders over REST (SyncOptions() defaults), fetch then load into
  DynamoDB Local; seconds of the fetch (Shopify's part) and of the whole sync.
- engine, old planner: the same from `git archive OLD_PLANNER_COMMIT` (equal time slices, a count and an
  oldest-order probe), in a child process; skipped when git or the commit is not available.
- tap-shopify 1.10.0 (singer-io, the last release that reads orders over REST: ShopifyAPI, since_id paging
  in updated_at windows), in its own virtualenv (`PEER_PYTHON`, default /tmp/peer/venv/bin/python), run
  through a shim that points ShopifyAPI at the simulator instead of https://{shop}.myshopify.com; one
  window over the whole history (`date_window_size` 4000 days: its default of 1 day would make ≥ 3 650
  windows, at least as many requests). Skipped with a message when not installed; install it apart from
  .venv (it pins ShopifyAPI 12.4.0): `python3 -m venv /tmp/peer/venv && /tmp/peer/venv/bin/pip install
  tap-shopify==1.10.0`.
- ShopifyAPI 12.7.0 paging (the library P1 uses): pages of 250 following the Link header, a 429 or 5xx
  retried after Retry-After (or 1 s): the fewest requests any client can make (pages only; no count).

Columns: requests the client made (from the simulator's stats), of them 503s and 429s, `answered` = the rest,
pages = ⌈orders ÷ 250⌉ and pages + 2 (the issue's bound for answered requests: scopes, count, the pages),
records it got (distinct ids), the bucket floor (the seconds its requests need at least on this bucket:
3 at once, then 1 a second), seconds of the fetch and of the whole run. The two ShopifyAPI-based clients
spend most of their seconds building objects of these ~16 KB orders (P1: ~30 ms an order), not waiting for
the bucket: compare their requests and bucket floor with ours, and their seconds only as what they take.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import RemoteSimulator, dynamodb, fresh_settings, header, shopify_settings, table
from shopify_pipeline.sync.engine import SyncEngine, SyncOptions
from shopify_pipeline.sync.service import SyncService

ORDERS = 1000
PAGE = 250
REPEATS = 3
OLD_PLANNER_COMMIT = "8704ff7"  # the last commit with equal-time slices (the engine the issue measured)
PEER_PYTHON = os.environ.get("PEER_PYTHON", "/tmp/peer/venv/bin/python")
REPO = Path(__file__).resolve().parent.parent
EVERY_THIRD_503 = {"rules": [{"kind": "503", "every": 3, "times": 0}]}


def _shop(name: str) -> dict:
    return {"name": name, "token": f"shpat_{name}", "orders": 1, "history_days": 3650, "seed": 10,
            "rest_bucket_size": 3, "rest_leak_per_second": 1.0, "faults": EVERY_THIRD_503}


def _admin(sim: RemoteSimulator, path: str, body: dict) -> dict:
    request = urllib.request.Request(f"{sim.base_url}/_simulator/shops/{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=120) as answer:
        return json.loads(answer.read())


@dataclass
class Run:
    seconds: float
    records: int
    stats: dict
    fetch_seconds: float | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)


# Our engine --------------------------------------------------------------------------------------------------

def _engine(endpoint: str, sim: RemoteSimulator, shop: str) -> Run:
    settings = fresh_settings(endpoint)
    service = SyncService(SyncEngine(settings, shopify_settings(), SyncOptions()))
    user = f"user-{shop}"
    service.add_connection(user, sim.shop_url(shop), f"literal:{sim.tokens[shop]}", api="rest")
    started = time.monotonic()
    fetched = service.engine.fetch(user, "initial", "orders")
    fetch_seconds = time.monotonic() - started
    slices = len(service.engine.state.load_checkpoint(user, "initial", "orders").state["slices"])
    loaded = service.engine.load(user, "initial", "orders")
    seconds = time.monotonic() - started
    return Run(seconds, loaded.records_written, sim.stats(shop), fetch_seconds,
               f"{slices} slice(s), {fetched.pages} pages" + ("" if loaded.finished else ", NOT finished"))


_OLD_ENGINE = """
import json, sys, time
from shopify_pipeline.settings import Settings, ShopifySettings
from shopify_pipeline.sync.engine import SyncEngine, SyncOptions
from shopify_pipeline.sync.service import SyncService
endpoint, prefix, shop_url, token = sys.argv[1:5]
settings = Settings.from_env({"AWS_ENDPOINT_URL_DYNAMODB": endpoint}).with_prefix(prefix)
service = SyncService(SyncEngine(settings, ShopifySettings(allow_local_shops=True), SyncOptions()))
service.add_connection("old", shop_url, "literal:" + token, api="rest")
started = time.monotonic()
fetched = service.engine.fetch("old", "initial", "orders")
fetch_seconds = time.monotonic() - started
slices = len(service.engine.state.load_checkpoint("old", "initial", "orders").state["slices"])
loaded = service.engine.load("old", "initial", "orders")
state = {"fetch_seconds": fetch_seconds, "seconds": time.monotonic() - started, "pages": fetched.pages,
         "slices": slices, "records": loaded.records_written, "finished": loaded.finished}
print("RESULT " + json.dumps(state))
"""


def _old_tree() -> Path | None:
    """The package as of OLD_PLANNER_COMMIT, unpacked in a temporary directory (None without git or commit)."""
    if shutil.which("git") is None:
        return None
    target = Path(tempfile.mkdtemp(prefix="p10-old-"))
    archive = subprocess.run(["git", "-C", str(REPO), "archive", OLD_PLANNER_COMMIT, "shopify_pipeline"],
                             capture_output=True)
    if archive.returncode != 0:
        return None
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


def _old_engine(endpoint: str, sim: RemoteSimulator, shop: str, tree: Path) -> Run:
    settings = fresh_settings(endpoint)
    prefix = settings.tables.checkpoints.removesuffix("sync_checkpoints")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", _OLD_ENGINE, endpoint, prefix, sim.shop_url(shop), sim.tokens[shop]],
                          capture_output=True, text=True, env=env, cwd=tree, timeout=600)
    seconds = time.monotonic() - started
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        return Run(seconds, 0, sim.stats(shop), note=f"failed: {done.stderr.strip()[-200:]}")
    state = json.loads(line[len("RESULT "):])
    return Run(state["seconds"], state["records"], sim.stats(shop), state["fetch_seconds"],
               f"{state['slices']} slice(s), {state['pages']} pages" + ("" if state["finished"] else ", NOT finished"))


# tap-shopify -------------------------------------------------------------------------------------------------

# ShopifyAPI's Session always builds https://{shop}.myshopify.com: point the resource at the simulator instead.
_PEER_SHIM = """
import sys
import shopify
import tap_shopify
from tap_shopify.streams.base import get_request_timeout, shopify_error_handling

site, token = sys.argv.pop(1), sys.argv.pop(1)

@shopify_error_handling
def initialize_shopify_client():
    shopify.ShopifyResource.site = site
    shopify.ShopifyResource.headers["X-Shopify-Access-Token"] = token
    shopify.Shop.set_timeout(get_request_timeout())
    return shopify.Shop.current().attributes

tap_shopify.initialize_shopify_client = initialize_shopify_client
tap_shopify.main()
"""


def _peer_installed() -> str | None:
    """Why the peer cannot run, or None when it can."""
    if not Path(PEER_PYTHON).exists():
        return f"{PEER_PYTHON} does not exist"
    probe = subprocess.run([PEER_PYTHON, "-c", "import tap_shopify, shopify"], capture_output=True, text=True)
    return None if probe.returncode == 0 else probe.stderr.strip().splitlines()[-1]


def _peer_catalog(sim: RemoteSimulator, shop: str, work: Path) -> Path:
    """tap-shopify's discovered catalog (run against a shop of its own) with only `orders` selected."""
    config = _peer_config(sim, shop, work)
    done = subprocess.run([PEER_PYTHON, "-c", _PEER_SHIM, f"{sim.shop_url(shop)}/admin/api/2024-01",
                           sim.tokens[shop], "--config", str(config), "--discover"],
                          capture_output=True, text=True, timeout=300, check=True)
    catalog = json.loads(done.stdout)
    catalog["streams"] = [s for s in catalog["streams"] if s["tap_stream_id"] == "orders"]
    for entry in catalog["streams"][0]["metadata"]:
        if entry["breadcrumb"] == []:
            entry["metadata"]["selected"] = True
    path = work / "catalog.json"
    path.write_text(json.dumps(catalog))
    return path


def _peer_config(sim: RemoteSimulator, shop: str, work: Path) -> Path:
    path = work / f"config-{shop}.json"
    path.write_text(json.dumps({"shop": shop, "api_key": sim.tokens[shop], "start_date": "2015-01-01T00:00:00Z",
                                "date_window_size": 4000, "results_per_page": PAGE}))
    return path


def _peer(sim: RemoteSimulator, shop: str, catalog: Path, work: Path) -> Run:
    config = _peer_config(sim, shop, work)
    started = time.monotonic()
    done = subprocess.run([PEER_PYTHON, "-c", _PEER_SHIM, f"{sim.shop_url(shop)}/admin/api/2024-01",
                           sim.tokens[shop], "--config", str(config), "--catalog", str(catalog)],
                          capture_output=True, text=True, timeout=900)
    seconds = time.monotonic() - started
    ids = set()
    for line in done.stdout.splitlines():
        message = json.loads(line) if line.startswith("{") else {}
        if message.get("type") == "RECORD" and message.get("stream") == "orders":
            ids.add(message["record"]["id"])
    note = "" if done.returncode == 0 else f"exit {done.returncode}: {done.stderr.strip()[-160:]}"
    return Run(seconds, len(ids), sim.stats(shop), seconds, note or "records to stdout (Singer), no database")


# ShopifyAPI paging -------------------------------------------------------------------------------------------

def _shopifyapi(sim: RemoteSimulator, shop: str) -> Run:
    import shopify
    from pyactiveresource.connection import ClientError, ServerError

    shopify.ShopifyResource.site = f"{sim.shop_url(shop)}/admin/api/2026-10"
    shopify.ShopifyResource.headers["X-Shopify-Access-Token"] = sim.tokens[shop]

    def call(fetch):
        while True:
            try:
                return fetch()
            except ServerError as error:  # pyactiveresource keeps only the code of a 5xx
                if error.code not in (502, 503, 504):
                    raise
                time.sleep(1.0)
            except ClientError as error:
                if error.response.code != 429:
                    raise
                time.sleep(float(error.response.headers.get("Retry-After") or 1.0))

    ids: set[int] = set()
    started = time.monotonic()
    try:
        page = call(lambda: shopify.Order.find(limit=PAGE, status="any"))
        ids.update(order.id for order in page)
        while page.has_next_page():
            page = call(page.next_page)
            ids.update(order.id for order in page)
    finally:
        seconds = time.monotonic() - started
        shopify.ShopifyResource.clear_session()
    return Run(seconds, len(ids), sim.stats(shop), seconds, "pages only, in memory")


# The run ---------------------------------------------------------------------------------------------------

def _row(client: str, runs: list[Run]) -> dict:
    best = min(runs, key=lambda run: run.seconds)
    stats = [run.stats for run in runs]
    made = [s["total_requests"] for s in stats]
    failed503 = [s["faults_served"].get("503", 0) for s in stats]
    throttled = [s["throttled"] for s in stats]
    answered = [m - f - t for m, f, t in zip(made, failed503, throttled, strict=True)]
    pages = math.ceil(ORDERS / PAGE)
    fetches = [run.fetch_seconds for run in runs if run.fetch_seconds is not None]
    return {
        "client": client,
        "requests": "/".join(map(str, made)),
        "503s": "/".join(map(str, failed503)),
        "429s": "/".join(map(str, throttled)),
        "answered": "/".join(map(str, answered)),
        "pages": pages,
        "pages + 2": pages + 2,
        "by endpoint (last run)": ", ".join(f"{k} {v}" for k, v in sorted(stats[-1]["requests"].items())),
        "records": "/".join(str(run.records) for run in runs),
        # What its requests alone cost on this bucket: 3 at once, then one a second (503s and 429s take room too).
        "bucket floor s": max(0, statistics.median(made) - 3) / 1.0,
        "fetch s (median)": round(statistics.median(fetches), 2) if fetches else "",
        "total s (median)": round(statistics.median(run.seconds for run in runs), 2),
        "total s (best)": round(best.seconds, 2),
        "note": best.note,
    }


def run(repeats: int = REPEATS) -> None:
    header("P10 tight bucket")
    peer_missing = _peer_installed()
    tree = _old_tree()
    clients = ["engine", "old", "peer", "lib"]
    shops = [_shop(f"{client}{i}") for client in clients for i in range(repeats)] + [_shop("discovery")]
    print(f"{ORDERS} orders (1 ten years old, {ORDERS - 1} created now), REST bucket 3 leaking 1/s, a 503 every "
          f"third request, time_scale 1, {repeats} runs per client (values run by run, a/b/c).", flush=True)
    results: dict[str, list[Run]] = {client: [] for client in clients}
    with dynamodb() as endpoint, RemoteSimulator(shops, time_scale=1) as sim, \
            tempfile.TemporaryDirectory(prefix="p10-peer-") as work:
        for shop in shops:
            _admin(sim, f"{shop['name']}/records/orders/create", {"n": ORDERS - 1, "seed": 3})
        catalog = None if peer_missing else _peer_catalog(sim, "discovery", Path(work))
        time.sleep(4)  # every bucket empty
        for i in range(repeats):
            results["engine"].append(_engine(endpoint, sim, f"engine{i}"))
            if tree is not None:
                results["old"].append(_old_engine(endpoint, sim, f"old{i}", tree))
            if catalog is not None:
                results["peer"].append(_peer(sim, f"peer{i}", catalog, Path(work)))
            results["lib"].append(_shopifyapi(sim, f"lib{i}"))
            print(f"run {i + 1}: " + ", ".join(f"{c} {results[c][-1].seconds:.2f}s" for c in clients if results[c]),
                  flush=True)
    if tree is not None:
        shutil.rmtree(tree, ignore_errors=True)
    names = {"engine": "engine (planned from the data)",
             "old": f"engine, old planner (git {OLD_PLANNER_COMMIT}: 4 equal time slices, count + probe)",
             "peer": "tap-shopify 1.10.0 (REST, since_id, one updated_at window)",
             "lib": "ShopifyAPI 12.7.0 paging (Link header), retry 429/5xx"}
    rows = [_row(names[client], runs) for client, runs in results.items() if runs]
    if tree is None:
        print(f"old planner skipped: git archive {OLD_PLANNER_COMMIT} not available", flush=True)
    if peer_missing:
        print(f"tap-shopify skipped: {peer_missing}. Install it apart from .venv: python3 -m venv /tmp/peer/venv "
              "&& /tmp/peer/venv/bin/pip install tap-shopify==1.10.0 (or set PEER_PYTHON)", flush=True)
    print("\nP10 summary\n" + table(rows, list(rows[0])), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=REPEATS)
    run(parser.parse_args(argv).repeats)


if __name__ == "__main__":
    main()
