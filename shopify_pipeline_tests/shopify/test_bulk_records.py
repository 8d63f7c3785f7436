"""Stitching a bulk result back into the documents paged queries return: equal to the simulator's own
documents for every data type, resumable after any record, and loud when the file is not grouped."""

from __future__ import annotations

import pytest

from shopify_pipeline.settings import DATA_TYPES, ShopifySettings
from shopify_pipeline.shopify.bulk import BulkOperations, ResultDownload
from shopify_pipeline.shopify.bulk_records import UngroupedResultError, stitch
from shopify_pipeline.shopify.client import ShopifyClient
from shopify_pipeline.shopify.graphql import GraphQLClient
from shopify_pipeline.shopify.sources import NESTED, bulk_listing_query
from shopify_pipeline.simulator import ShopConfig, Simulator
from shopify_pipeline_tests.support.graphql_truth import graphql_truth

SETTINGS = ShopifySettings(allow_local_shops=True, backoff_seconds=0.01, timeout_seconds=5.0)


@pytest.fixture(scope="module")
def sim():
    shop = ShopConfig("stitch", "shpat_stitch", orders=250, products=30, customers=40, seed=9, plan="plus",
                      large_order_every=100, large_order_line_items=400, large_product_every=10,
                      large_product_variants=300)
    with Simulator([shop], time_scale=50) as running:
        yield running


def _export(sim, data_type: str, group: bool = True) -> str:
    client = ShopifyClient(sim.shop_url("stitch"), "shpat_stitch", SETTINGS)
    operations = BulkOperations(GraphQLClient(client))
    started = operations.start(bulk_listing_query(data_type), group_objects=group)
    done = operations.wait(started.id, first_poll=0.05, max_poll=0.2, max_seconds=60)
    client.close()
    return operations.result_url(done)


@pytest.mark.parametrize("data_type", DATA_TYPES)
def test_a_grouped_bulk_result_stitches_into_the_paged_documents(sim, data_type):
    url = _export(sim, data_type)
    download = ResultDownload(SETTINGS)
    records = list(stitch(download.lines(url), NESTED[data_type][0]))
    download.close()
    documents = {int(r.document["legacyResourceId"]): r.document for r in records}
    assert len(documents) == len(records)
    assert documents == graphql_truth(sim, "stitch", data_type)  # 400 line items, 300 variants: whole


def test_a_reader_stopped_after_any_record_resumes_there_and_reads_nothing_twice(sim):
    url = _export(sim, "orders")
    download = ResultDownload(SETTINGS)
    everything = list(stitch(download.lines(url), "lineItems"))
    for stop in (0, 1, 99, len(everything) - 2):
        resumed = list(stitch(download.lines(url, everything[stop].resume_offset), "lineItems",
                              everything[stop].resume_offset))
        assert resumed == everything[stop + 1:]
    download.close()


def test_an_ungrouped_result_is_refused_not_cut_short(sim):
    url = _export(sim, "products", group=False)  # 2026-01+: children may come before their parent
    download = ResultDownload(SETTINGS)
    with pytest.raises(UngroupedResultError, match="not grouped"):
        list(stitch(download.lines(url), "variants"))
    download.close()


def test_stitching_holds_one_record_and_checks_every_line():
    lines = [b'{"id": "gid://shopify/Order/1"}', b'{"id": "gid://shopify/LineItem/1", "__parentId": '
             b'"gid://shopify/Order/1"}', b'{"id": "gid://shopify/Order/2"}']
    offsets, at = [], 0
    for line in lines:
        at += len(line) + 1
        offsets.append(at)
    records = list(stitch(zip(lines, offsets, strict=True), "lineItems"))
    assert [r.document for r in records] == [
        {"id": "gid://shopify/Order/1", "lineItems": {"nodes": [{"id": "gid://shopify/LineItem/1"}]}},
        {"id": "gid://shopify/Order/2", "lineItems": {"nodes": []}}]
    assert [r.resume_offset for r in records] == [offsets[1], offsets[2]]
    with pytest.raises(UngroupedResultError):
        list(stitch([(lines[1], offsets[1])], "lineItems"))  # an item before any record
    with pytest.raises(Exception, match="not JSON"):
        list(stitch([(b"{broken", 8)], "lineItems"))
