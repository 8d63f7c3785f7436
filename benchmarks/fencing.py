"""Fencing: what a fenced staged-page write costs beside a plain one, side by side in one run.

A staged page is a `TransactWriteItems` of the put and a `ConditionCheck` of the lease token (so a sync
that lost its lease cannot replace the page of the sync that took over). DynamoDB charges a transactional
write twice the units of a plain one, plus the check. This stages the same real 250-order page (rendered by
the simulator, compressed as the engine stores it) N times each way against DynamoDB Local, and reports
seconds per page and the write units DynamoDB reports (`ReturnConsumedCapacity`) for a plain put, for the
whole page in one transaction, and for the staged form: the body as a plain blob chunk under a new key and
only a small pointer item in the transaction.
"""

from __future__ import annotations

import statistics
import time
import uuid
import zlib

import requests

from benchmarks.common import dynamodb, fresh_settings, header
from shopify_pipeline.dynamo.client import dynamodb_client
from shopify_pipeline.dynamo.lease import LeaseStore
from shopify_pipeline.dynamo.pages import PageStore
from shopify_pipeline.simulator import ShopConfig, Simulator

PAGES = 60


def run() -> None:
    header("Fencing: staged page put, plain vs fenced (TransactWriteItems + ConditionCheck)")
    with dynamodb() as endpoint, Simulator([ShopConfig("f", "shpat_f", orders=300, seed=9)]) as sim:
        body = requests.get(f"{sim.shop_url('f')}/admin/api/2025-10/orders.json?limit=250&status=any",
                            headers={"X-Shopify-Access-Token": "shpat_f"}, timeout=30).content
        settings = fresh_settings(endpoint)
        client = dynamodb_client(settings)
        pages = PageStore(client, settings)
        fence = LeaseStore(client, settings).acquire("bench", "orders", f"bench:{uuid.uuid4().hex[:6]}")
        compressed = len(zlib.compress(body, 6))
        timings = {}
        for name, page_fence in (("plain", None), ("fenced", fence)):
            pages.put("warm#up", 1, body, 250, "u", page_fence)
            seconds = []
            for number in range(PAGES):
                started = time.perf_counter()
                pages.put(f"bench#{name}", number, body, 250, "u", page_fence)
                seconds.append(time.perf_counter() - started)
            timings[name] = statistics.median(seconds)
        units = _consumed_units(client, settings.tables.pages, settings.tables.documents, fence, body)
    print(f"page: {len(body):,} bytes of JSON, {compressed:,} compressed (250 orders)")
    print(f"{'write':34} {'median s/page':>14} {'write units/page':>17}")
    print(f"{'plain put (before fencing)':34} {timings['plain']:14.4f} {units['plain']:17}")
    print(f"{'whole page in one transaction':34} {'':14} {units['transaction']:17}")
    print(f"{'fenced as staged: blob + pointer':34} {timings['fenced']:14.4f} {units['blob'] + units['pointer']:17}")
    print(f"fenced / plain: {timings['fenced'] / timings['plain']:.2f}x time, "
          f"{(units['blob'] + units['pointer']) / units['plain']:.3f}x write units per staged page "
          f"(a whole-page transaction would be {units['transaction'] / units['plain']:.2f}x)")


def _consumed_units(client, table: str, documents: str, fence, body: bytes) -> dict[str, float]:
    """Write units DynamoDB reports: a plain page put, the whole page as one fenced transaction, and the
    staged form (the body as a blob chunk, plain; a small pointer item in the fenced transaction)."""
    packed = zlib.compress(body, 6)
    item = {"syncKey": {"S": "bench#units"}, "page": {"N": "1"}, "records": {"N": "250"}, "body": {"B": packed}}
    pointer = {"syncKey": {"S": "bench#units"}, "page": {"N": "2"}, "records": {"N": "250"},
               "chunks": {"N": "1"}, "blobKey": {"S": f"page#bench#units#2#{uuid.uuid4().hex[:8]}"}}
    chunk = {"documentKey": {"S": pointer["blobKey"]["S"]}, "chunk": {"N": "0"}, "data": {"B": packed}}
    check = {"TableName": fence.table, "Key": fence.key, "ConditionExpression": "#tok = :t",
             "ExpressionAttributeNames": {"#tok": "token"}, "ExpressionAttributeValues": {":t": {"S": fence.token}}}

    def transaction(put: dict) -> float:
        answer = client.transact_write_items(TransactItems=[{"Put": {"TableName": table, "Item": put}},
                                                            {"ConditionCheck": check}],
                                             ReturnConsumedCapacity="TOTAL")
        return sum(c.get("CapacityUnits", 0) for c in answer.get("ConsumedCapacity", []))

    plain = client.put_item(TableName=table, Item=item, ReturnConsumedCapacity="TOTAL")["ConsumedCapacity"]
    blob = client.put_item(TableName=documents, Item=chunk, ReturnConsumedCapacity="TOTAL")["ConsumedCapacity"]
    return {"plain": plain["CapacityUnits"], "transaction": transaction(item), "blob": blob["CapacityUnits"],
            "pointer": transaction(pointer)}
