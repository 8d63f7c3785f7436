"""The seed's recovery scenarios for real: a failed batch 26-50 through the DynamoDB fault proxy, and a
sync process killed with SIGKILL that resumes from its checkpoint."""

import random
from dataclasses import replace

from shopify_pipeline.dynamo.state import StateStore
from shopify_pipeline.sync.engine import SyncEngine, SyncOptions
from shopify_pipeline.sync.service import SyncService
from shopify_pipeline_tests.support.dynamo_fault_proxy import DynamoFaultProxy
from shopify_pipeline_tests.sync.conftest import FAST_SHOPIFY, kill_at_page, source_of_truth, stored, sync_process


def test_failed_batch_26_50_is_saved_then_retried_to_success(settings, sim):
    with DynamoFaultProxy(settings.dynamodb_endpoint_url) as proxy:
        proxied = replace(settings, dynamodb_endpoint_url=proxy.endpoint_url, write_workers=1,
                          unprocessed_retries=2, unprocessed_backoff_seconds=0.001)
        service = SyncService(SyncEngine(proxied, FAST_SHOPIFY, SyncOptions(slices=1)))
        service.add_connection("user-small", sim.shop_url("small"), "literal:shpat_small", api="rest")
        # The second BatchWriteItem (records 26-50) keeps coming back unprocessed: 1 try + 2 resubmissions.
        original = service.engine.writer._submit
        calls = {"n": 0}

        def second_batch_fails(requests):
            calls["n"] += 1
            if calls["n"] == 2:
                proxy.add_fault("unprocessed", keep=0, count=3)
            return original(requests)

        service.engine.writer._submit = second_batch_fails
        result = service.initial_sync("user-small", data_types=("orders",))

        assert not result.success
        assert [b["range"] for b in result.data_types["orders"].failed_batches] == ["26-50"]
        status = service.get_sync_status("user-small")["dataTypes"]["orders"]
        assert status["status"] == "failed" and status["failedBatchRanges"] == ["26-50"]
        assert "retry-failed --user user-small --sync-type initial --data-type orders" in status["message"]
        found = StateStore(service.engine.dynamodb, proxied).find_failed_batches("orders")
        assert found[0]["syncType"] == "initial_failed_orders"
        assert len(stored(service, "user-small", "orders")) == 60 - 25

        proxy.clear_faults()
        retried = service.retry_failed_batches("user-small", "initial", "orders")
        assert (retried.success, retried.retried, retried.still_failed) == (True, 1, 0)
        assert stored(service, "user-small", "orders") == source_of_truth(sim, "small", "orders")
        # Nothing is left failed and the fetch was complete: the retry finished the sync.
        assert service.get_sync_status("user-small")["dataTypes"]["orders"]["status"] == "completed"
        assert service.load_checkpoint("user-small", "initial") == {}
        assert StateStore(service.engine.dynamodb, proxied).find_failed_batches("orders") == []


def test_a_sync_killed_with_sigkill_resumes_and_refetches_at_most_one_page_per_slice(settings, slow_sim):
    engine = SyncEngine(settings, FAST_SHOPIFY)
    SyncService(engine).add_connection("user-big", slow_sim.shop_url("big"), "literal:shpat_big", api="rest")
    rng = random.Random(7)
    kills = 0
    for _ in range(3):
        process = sync_process(settings, "user-big", SHOPIFY_PAGE_SIZE="100")
        # A killed process keeps its lease until it expires; kill_at_page hands it over at once.
        kills += kill_at_page(engine, process, "user-big", rng.randint(2, 8) + 8 * kills)
    final = sync_process(settings, "user-big", SHOPIFY_PAGE_SIZE="100")
    assert final.wait(timeout=240) == 0
    assert kills >= 2
    page_requests = slow_sim.stats("big")["requests"]["orders"]
    status = engine.state.get_status("user-big")["orders"]
    assert status["status"] == "completed"
    pages = status["page"]  # slices end with partial pages, so this is a little over 3000 / 100
    planning = 1  # the oldest-order request made when planning slices
    refetched = page_requests - pages - planning
    print(f"{kills} kills: {refetched} pages fetched again ({pages} pages in all)")
    assert 0 <= refetched <= kills * SyncOptions().slices, f"{refetched} pages fetched again after {kills} kills"
    assert stored(SyncService(engine), "user-big", "orders") == source_of_truth(slow_sim, "big", "orders")


def test_a_retried_batch_never_overwrites_a_newer_copy(settings, sim):
    service = SyncService(SyncEngine(settings, FAST_SHOPIFY))
    service.add_connection("user-small", sim.shop_url("small"), "literal:shpat_small", api="rest")
    assert service.initial_sync("user-small", data_types=("orders",)).success
    current = stored(service, "user-small", "orders")
    older_id, newer_id = sorted(current)[:2]
    older = {**current[older_id], "updated_at": "2001-01-01T00:00:00-05:00", "note": "a stale copy"}
    newer = {**current[newer_id], "updated_at": "2099-01-01T00:00:00-05:00", "note": "a newer copy"}
    service.engine.state.save_failed_batch("user-small", "manual", "orders", 1, 2, [older, newer], "test", 1)
    retried = service.retry_failed_batches("user-small", "manual", "orders")
    assert (retried.success, retried.retried) == (True, 1)
    after = stored(service, "user-small", "orders")
    assert after[older_id] == current[older_id], "the stale copy was not written over the newer one"
    assert after[newer_id] == newer
