"""The sync-state store against DynamoDB Local: checkpoints, status, failed batches, leases."""

import time

import pytest

from shopify_pipeline.dynamo.state import (
    Checkpoint,
    CheckpointError,
    StaleCheckpointError,
    StateStore,
    checkpoint_key,
)


@pytest.fixture
def store(client, settings):
    return StateStore(client, settings)


def _progress(records: int) -> dict:
    """A checkpoint state shaped like the engine's: cursors and counters, however many records."""
    cursor = "https://shop.myshopify.com/admin/api/2025-10/orders.json?limit=250&page_info=" + "x" * 300
    return {
        "slices": [{"index": i, "next_url": cursor, "pages": records // 250 // 8, "records": records // 8,
                    "done": False} for i in range(8)],
        "pages": records // 250, "records": records, "failed_pages": [],
    }


def test_checkpoint_round_trip_with_ttl_and_version(store, client, settings):
    assert store.load_checkpoint("u1", "initial", "orders") is None
    saved = store.save_checkpoint(Checkpoint("u1", "initial", "orders", _progress(500)))
    assert saved.version == 1
    loaded = store.load_checkpoint("u1", "initial", "orders")
    assert loaded.state == _progress(500) and loaded.version == 1
    item = client.get_item(TableName=settings.tables.checkpoints,
                           Key={"userId": {"S": "u1"}, "syncType": {"S": checkpoint_key("initial", "orders")}})["Item"]
    assert abs(int(item["ttl"]["N"]) - (time.time() + 7 * 24 * 3600)) < 60
    store.clear_checkpoint("u1", "initial", "orders")
    assert store.load_checkpoint("u1", "initial", "orders") is None


def test_checkpoint_stays_small_after_100k_records_of_progress(store):
    checkpoint = Checkpoint("u1", "initial", "orders")
    for records in (1_000, 10_000, 100_000):
        checkpoint = store.save_checkpoint(Checkpoint("u1", "initial", "orders", _progress(records),
                                                      checkpoint.version))
        assert store.checkpoint_size("u1", "initial", "orders") < 4096


def test_a_stale_checkpoint_write_is_refused(store):
    first = store.save_checkpoint(Checkpoint("u1", "manual", "orders", {"pages": 1}))
    store.save_checkpoint(Checkpoint("u1", "manual", "orders", {"pages": 2}, first.version))
    with pytest.raises(StaleCheckpointError, match="another writer"):
        store.save_checkpoint(Checkpoint("u1", "manual", "orders", {"pages": 99}, first.version))
    with pytest.raises(StaleCheckpointError):  # a second "first" writer too
        store.save_checkpoint(Checkpoint("u1", "manual", "orders", {"pages": 99}))
    assert store.load_checkpoint("u1", "manual", "orders").state == {"pages": 2}


@pytest.mark.parametrize("damage", [
    {"state": {"S": "{not json"}},
    {"state": {"S": "[1, 2]"}},
    {"schemaVersion": {"N": "99"}},
])
def test_a_corrupt_checkpoint_item_says_how_to_clear_it(store, client, settings, damage):
    store.save_checkpoint(Checkpoint("u1", "daily", "orders", {"pages": 1}))
    key = {"userId": {"S": "u1"}, "syncType": {"S": checkpoint_key("daily", "orders")}}
    item = client.get_item(TableName=settings.tables.checkpoints, Key=key)["Item"]
    client.put_item(TableName=settings.tables.checkpoints, Item={**item, **damage})
    with pytest.raises(CheckpointError, match="shopify-pipeline checkpoint clear --user u1 --sync-type daily"):
        store.load_checkpoint("u1", "daily", "orders")


def test_status_is_durable_per_data_type(store, settings, client):
    store.set_status("u1", "orders", "fetching", "initial", stage="fetch", recordCount=750, page=3,
                     message="Fetching page 3... (750 orders so far)")
    store.set_status("u1", "products", "completed", stage="done", recordCount=12)
    other_process = StateStore(client, settings)
    status = other_process.get_status("u1")
    assert status["orders"]["message"] == "Fetching page 3... (750 orders so far)"
    assert status["orders"]["page"] == 3 and status["orders"]["syncType"] == "initial"
    assert status["products"]["status"] == "completed"
    assert status["orders"]["updatedAt"].endswith("Z")
    assert other_process.clear_status("u1", "orders") == 1
    assert set(other_process.get_status("u1")) == {"products"}


def test_failed_batches_are_saved_found_by_the_seeds_query_and_removed(store):
    records = [{"id": 2**60 + i, "name": f"#{i}", "big": "x" * 30_000} for i in range(26, 51)]
    batch_id = store.save_failed_batch("u1", "initial", "orders", 26, 50, records, "throttled", 6)
    store.save_failed_batch("u2", "daily", "products", 1, 25, [{"id": 1}], "boom", 6)
    entries = store.failed_batches("u1", "initial", "orders")
    assert [(e["range"], e["count"], e["attempts"]) for e in entries] == [("26-50", 25, 6)]
    assert store.failed_batch_records(entries[0]) == records

    found = store.find_failed_batches("orders")
    assert [(f["userId"], f["syncType"]) for f in found] == [("u1", "initial_failed_orders")]
    assert store.find_failed_batches("orders", user_id="u2") == []

    assert store.remove_failed_batch("u1", "initial", "orders", batch_id)
    assert store.failed_batches("u1", "initial", "orders") == []
    assert not store.remove_failed_batch("u1", "initial", "orders", batch_id)
