"""The batch writer through a fault proxy in front of DynamoDB Local: every record is written or
reported in a failed batch, never silently lost."""

import pytest
from botocore.config import Config

from shopify_pipeline.dynamo.batch_writer import BatchWriter
from shopify_pipeline.dynamo.client import TableMissingError, dynamodb_client
from shopify_pipeline.dynamo.records import RecordTable
from shopify_pipeline.dynamo.state import StateStore
from shopify_pipeline.settings import Settings
from shopify_pipeline_tests.support.dynamo_fault_proxy import DynamoFaultProxy


@pytest.fixture
def proxy(dynamodb_endpoint):
    with DynamoFaultProxy(dynamodb_endpoint) as running:
        yield running


@pytest.fixture
def via_proxy(settings, proxy):
    proxied = Settings(**{**settings.__dict__, "dynamodb_endpoint_url": proxy.endpoint_url})
    return proxied, dynamodb_client(proxied)


def _orders(n: int, start: int = 1) -> list[dict]:
    return [{"id": 9_000_000_000_000_000 + i, "name": f"#{i}", "total_price": "1.00"} for i in range(start, start + n)]


def _stored_ids(client, settings, user="u1") -> set[int]:
    return {int(i["id"]["N"]) for i in RecordTable(client, settings, "orders").items(user, ["id"])}


def test_writes_in_batches_of_25_and_collapses_duplicate_keys(settings, client, proxy, via_proxy):
    proxied, proxied_client = via_proxy
    # 103 records: the first batch repeats ids 1..3 (DynamoDB refuses duplicate keys in one request).
    records = _orders(22) + _orders(3) + _orders(78, start=23)
    report = BatchWriter(proxied_client, proxied).write_records("u1", "orders", records)
    assert report.written == 100 and report.duplicates_collapsed == 3 and not report.failed_batches
    assert proxy.stats["BatchWriteItem"].requests == 5  # 103 records -> 5 batches of <= 25
    assert _stored_ids(client, settings) == {o["id"] for o in _orders(100)}


def test_unprocessed_items_are_resubmitted_until_written(settings, client, proxy, via_proxy):
    proxied, proxied_client = via_proxy
    proxy.add_fault("unprocessed", keep=10, count=3)
    report = BatchWriter(proxied_client, proxied, workers=1, sleep=lambda s: None).write_records(
        "u1", "orders", _orders(50))
    # Batch 1: 15 of 25 come back, then 5 of those 15, then the last 5 are written.
    assert report.written == 50 and report.resubmissions == 2 and not report.failed_batches
    assert proxy.stats["BatchWriteItem"].items_unprocessed == 15 + 5
    assert len(_stored_ids(client, settings)) == 50


def test_throttling_is_retried_by_botocore(settings, client, proxy, via_proxy):
    proxied, proxied_client = via_proxy
    proxy.add_fault("throttle", count=2)
    proxy.add_fault("error_500", count=1)
    report = BatchWriter(proxied_client, proxied).write_records("u1", "orders", _orders(25))
    assert report.written == 25 and not report.failed_batches
    assert len(_stored_ids(client, settings)) == 25


def test_batches_that_keep_failing_are_reported_with_ranges_and_saved(settings, client, proxy, via_proxy):
    proxied, _ = via_proxy
    no_retries = dynamodb_client(proxied, Config(retries={"total_max_attempts": 1, "mode": "standard"}))
    writer = BatchWriter(no_retries, proxied, workers=1, sleep=lambda s: None)
    # Records 26-50 are throttled; 51-75 keep coming back unprocessed; the rest get through.
    records = _orders(100)
    writer.write_records("u1", "orders", records[:25])
    proxy.add_fault("throttle", count=1)
    proxy.add_fault("unprocessed", keep=0, count=1 + proxied.unprocessed_retries)
    report = writer.write_records("u1", "orders", records[25:75], first_position=26)
    proxy.clear_faults()
    writer.write_records("u1", "orders", records[75:], first_position=76)

    assert [b.range for b in report.failed_batches] == ["26-50", "51-75"]
    assert "ProvisionedThroughputExceeded" in report.failed_batches[0].error
    assert "unprocessed" in report.failed_batches[1].error
    stored = _stored_ids(client, settings)
    failed = {r["id"] for b in report.failed_batches for r in b.records}
    assert stored | failed == {r["id"] for r in records}, "every record is written or in a failed batch"

    store = StateStore(client, settings)
    for batch in report.failed_batches:
        store.save_failed_batch("u1", "initial", "orders", batch.first, batch.last, batch.records,
                                batch.error, batch.attempts)
    saved = store.find_failed_batches("orders", "u1")[0]["batches"]
    assert [b["range"] for b in saved] == ["26-50", "51-75"]


def test_a_dropped_connection_is_reported_not_raised(settings, client, proxy, via_proxy):
    proxied, _ = via_proxy
    no_retries = dynamodb_client(proxied, Config(retries={"total_max_attempts": 1, "mode": "standard"}))
    proxy.add_fault("drop", count=1)
    report = BatchWriter(no_retries, proxied, workers=1).write_records("u1", "orders", _orders(50))
    assert report.written == 25 and [b.range for b in report.failed_batches] == ["1-25"]


def test_a_missing_table_raises_with_the_fix(dynamodb_endpoint):
    settings = Settings.from_env({"AWS_ENDPOINT_URL_DYNAMODB": dynamodb_endpoint}).with_prefix("nope_")
    with pytest.raises(TableMissingError, match="create-tables"):
        BatchWriter(dynamodb_client(settings), settings).write_records("u1", "orders", _orders(3))


def test_a_batch_dynamodb_refuses_as_invalid_is_reported_not_raised(settings, client):
    # The client does not validate parameters itself (DynamoDB does): an empty key is DynamoDB's
    # ValidationException, reported as a failed batch with the records to save, like any other refusal.
    report = BatchWriter(client, settings, workers=1).write_records("", "orders", _orders(30))
    assert report.written == 0 and [b.range for b in report.failed_batches] == ["1-25", "26-30"]
    assert all("ValidationException" in batch.error for batch in report.failed_batches)
