"""Dagster overhead: wall time of one materialized user partition vs the engine alone, same shop size.

Twin shops (same seed: 2 000 orders, 200 products, 500 customers; unlimited plan so no bucket waits) in one
simulator process. "Engine alone" is `SyncService.initial_sync(user)` (fetch then load of the three data
types, one after another). "Dagster" is `dg.materialize` of the six assets of `shopify_pipeline.defs`
(`sync_assets`: fetch → load per data type, run config sync_type=initial) for the user's partition, with
an ephemeral instance (`DagsterInstance.ephemeral()`, in-process executor) and the same engine settings.
Each is run twice, alternating, on fresh tables and fresh users, so that warm-up falls on both.
"""

from __future__ import annotations

import time

import dagster as dg

from benchmarks.common import RemoteSimulator, dynamodb, fresh_settings, header, service_for, shopify_settings, table
from shopify_pipeline.defs.assets import sync_assets, sync_run_config
from shopify_pipeline.defs.partitions import USER_PARTITIONS_NAME
from shopify_pipeline.defs.resources import DynamoDBResource, ShopifyResource, SyncEngineResource
from shopify_pipeline.dynamo.records import RecordTable
from shopify_pipeline.sync.engine import SyncOptions

SHOP = {"orders": 2_000, "products": 200, "customers": 500, "seed": 9, "plan": "unlimited"}
ROUNDS = 2


def _engine_alone(endpoint: str, sim: RemoteSimulator, shop: str, user: str) -> tuple[float, dict]:
    settings = fresh_settings(endpoint)
    service = service_for(settings, shopify_settings(), SyncOptions(), {user: (sim.shop_url(shop), f"shpat_{shop}")})
    started = time.monotonic()
    result = service.initial_sync(user)
    seconds = time.monotonic() - started
    assert result.success, result
    return seconds, _counts(service.engine, settings, user)


def _dagster(endpoint: str, sim: RemoteSimulator, shop: str, user: str) -> tuple[float, dict]:
    settings = fresh_settings(endpoint)
    prefix = settings.tables.checkpoints.removesuffix("sync_checkpoints")
    resource = SyncEngineResource(
        dynamodb=DynamoDBResource(endpoint_url=endpoint, region_name=settings.aws_region, table_prefix=prefix),
        shopify=ShopifyResource(allow_local_shops=True),
    )
    service = service_for(settings, shopify_settings(), SyncOptions(), {user: (sim.shop_url(shop), f"shpat_{shop}")})
    started = time.monotonic()
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(USER_PARTITIONS_NAME, [user])
    result = dg.materialize(
        sync_assets,
        partition_key=user,
        instance=instance,
        resources={"sync_engine": resource},
        run_config={**sync_run_config("initial"), "loggers": {"console": {"config": {"log_level": "WARNING"}}}},
    )
    seconds = time.monotonic() - started
    assert result.success
    return seconds, _counts(service.engine, settings, user)


def _counts(engine, settings, user: str) -> dict:
    return {d: RecordTable(engine.dynamodb, settings, d).count(user) for d in ("orders", "products", "customers")}


def run() -> None:
    header("Dagster overhead")
    shops = [{"name": f"g{i}", "token": f"shpat_g{i}", **SHOP} for i in range(2 * ROUNDS)]
    rows = []
    with dynamodb() as endpoint, RemoteSimulator(shops) as sim:
        # Warm-up (imports, DynamoDB Local JIT, the simulator's render cache is per shop so no help there).
        _engine_alone(endpoint, sim, "g0", "user-warmup")
        for r in range(ROUNDS):
            for kind, fn, shop in (
                ("engine alone", _engine_alone, f"g{2 * r}"),
                ("dagster materialize", _dagster, f"g{2 * r + 1}"),
            ):
                seconds, counts = fn(endpoint, sim, shop, f"user-{kind.split()[0]}-{r}")
                rows.append({"round": r + 1, "how": kind, "seconds": seconds, "stored": counts})
                print(table(rows[-1:], list(rows[-1])), flush=True)
    engine_s = sum(r["seconds"] for r in rows if r["how"] == "engine alone") / ROUNDS
    dagster_s = sum(r["seconds"] for r in rows if r["how"] != "engine alone") / ROUNDS
    print(
        f"\nDagster summary: engine alone {engine_s:.1f}s, dagster {dagster_s:.1f}s (mean of {ROUNDS}); "
        f"overhead {dagster_s - engine_s:+.1f}s = {dagster_s / engine_s:.2f}×\n" + table(rows, list(rows[0])),
        flush=True,
    )
