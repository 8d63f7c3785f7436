"""P2 load: records/s into DynamoDB Local, our BatchWriter vs boto3's single-threaded `Table.batch_writer()`.

The same 5 000 orders (rendered by the simulator, parsed exactly: ints stay ints, fractions Decimal) are
written by each contender into its own fresh tables of the same DynamoDB Local, in one run.

Same item encoding for fairness: both write exactly the items `encode_record` produces —
- compressed (our default): userId, id, createdAt, updatedAt, 8 query attributes and `docZ` (zlib JSON);
- native (Settings(document_format="native")): the same keys plus `doc`, the order as a DynamoDB map.
Two views, each timing the same work for both:
- write only: every record is encoded once beforehand; BatchWriter takes its items from that cache (its
  `encode_record` is swapped for a lookup), boto3 gets the same items converted to its resource layer's
  Python types (conversion not timed);
- encode + write: BatchWriter.write_records on the documents (it encodes in its worker threads) vs
  boto3's write time plus the time `encode_record` took for all records.

*client CPU ms / 1000 records* is this process's CPU time (all threads) in the timed part: DynamoDB Local's own
work is not in it, and it moves less than seconds do when other work shares the machine.

`python -m benchmarks.p2_load --formats compressed --repeats 5` skips the native rows and takes the median of 5
interleaved runs of each contender (~3 min; a single run on a shared machine is at the mercy of its load).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator

import boto3
from boto3.dynamodb.types import TypeDeserializer

from benchmarks.common import dynamodb, fresh_settings, header, table
from shopify_pipeline.dynamo import batch_writer
from shopify_pipeline.dynamo.batch_writer import BatchWriter
from shopify_pipeline.dynamo.client import dynamodb_client
from shopify_pipeline.dynamo.codec import EncodedRecord, encode_record
from shopify_pipeline.dynamo.records import RecordTable
from shopify_pipeline.exact_json import parse_json
from shopify_pipeline.simulator import ShopConfig, Simulator

ORDERS = 5_000
USER = "user-p2"
FORMATS = ("compressed", "native")
WORKERS = (1, 4, 8)


def _orders() -> list[dict]:
    with Simulator([ShopConfig("p2", "shpat_p2", orders=ORDERS, seed=2, plan="unlimited")]) as sim:
        return [parse_json(json.dumps(doc)) for doc in sim.records("p2", "orders")]


@contextlib.contextmanager
def _pre_encoded(cache: dict[int, EncodedRecord] | None) -> Iterator[None]:
    """With a cache, BatchWriter takes each record's items from it instead of encoding (write path only)."""
    if cache is None:
        yield
        return
    original = batch_writer.encode_record
    batch_writer.encode_record = lambda table, user, data_type, doc, *args, **kwargs: cache[doc["id"]]
    try:
        yield
    finally:
        batch_writer.encode_record = original


def _encode(orders: list[dict], document_format: str) -> tuple[dict[int, EncodedRecord], float, float]:
    started, cpu = time.monotonic(), time.process_time()
    cache = {
        doc["id"]: encode_record("orders", USER, "orders", doc, 380_000, native=document_format == "native")
        for doc in orders
    }
    assert not any(record.chunks for record in cache.values())
    return cache, time.monotonic() - started, time.process_time() - cpu


def _ours(
    endpoint: str, orders: list[dict], document_format: str, workers: int, cache: dict[int, EncodedRecord] | None
) -> dict:
    settings = fresh_settings(endpoint, document_format=document_format, write_workers=workers)
    writer = BatchWriter(dynamodb_client(settings), settings)
    with _pre_encoded(cache):
        started, cpu = time.monotonic(), time.process_time()
        report = writer.write_records(USER, "orders", orders)
        seconds, cpu = time.monotonic() - started, time.process_time() - cpu
    stored = RecordTable(dynamodb_client(settings), settings, "orders").count(USER)
    assert report.written == stored == len(orders), (report, stored)
    return {"seconds": seconds, "cpu": cpu, "failed": report.failed_records, "resubmissions": report.resubmissions}


def _boto3(endpoint: str, cache: dict[int, EncodedRecord], document_format: str) -> dict:
    settings = fresh_settings(endpoint, document_format=document_format)
    deserializer = TypeDeserializer()
    started = time.monotonic()
    items = [{key: deserializer.deserialize(value) for key, value in record.item.items()} for record in cache.values()]
    convert_seconds = time.monotonic() - started
    resource = boto3.resource(
        "dynamodb",
        endpoint_url=endpoint,
        region_name=settings.aws_region,
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
    started, cpu = time.monotonic(), time.process_time()
    with resource.Table(settings.tables.orders).batch_writer() as batch:
        for item in items:
            batch.put_item(Item=item)
    seconds, cpu = time.monotonic() - started, time.process_time() - cpu
    stored = RecordTable(dynamodb_client(settings), settings, "orders").count(USER)
    assert stored == len(items)
    return {"seconds": seconds, "cpu": cpu, "convert_seconds": convert_seconds}


def _median_run(runs: list[dict]) -> tuple[dict, str]:
    """The run of median seconds, and the spread of all of them for the note."""
    ordered = sorted(runs, key=lambda run: run["seconds"])
    spread = "" if len(runs) == 1 else f"; {len(runs)} runs {ordered[0]['seconds']:.2f}–{ordered[-1]['seconds']:.2f}s"
    return ordered[len(ordered) // 2], spread


def run(formats: tuple[str, ...] = FORMATS, repeats: int = 1) -> None:
    header("P2 load into DynamoDB Local")
    orders = _orders()
    size = sum(len(json.dumps(o, default=str)) for o in orders)
    print(f"{ORDERS} orders, {size / ORDERS / 1024:.1f} KB of JSON each on average; median of {repeats} run(s), "
          "contenders interleaved in each", flush=True)
    rows = []
    with dynamodb() as endpoint:
        # Warm-up: the first writes into a fresh DynamoDB Local pay for its JIT.
        _ours(endpoint, orders[:1000], "compressed", 4, None)
        for document_format in formats:
            cache, encode_seconds, encode_cpu = _encode(orders, document_format)
            runs: dict[str, list[dict]] = {}
            # Interleaved: on a shared machine the load changes during a run, and each contender gets its share.
            for _ in range(repeats):
                runs.setdefault("boto3", []).append(_boto3(endpoint, cache, document_format))
                for workers in WORKERS:
                    runs.setdefault(workers, []).append(_ours(endpoint, orders, document_format, workers, cache))
                runs.setdefault("encode", []).append(_ours(endpoint, orders, document_format, 4, None))
            base, base_spread = _median_run(runs["boto3"])
            write_rate = ORDERS / base["seconds"]
            e2e_rate = ORDERS / (base["seconds"] + encode_seconds)

            def add(
                writer: str, path: str, seconds: float, base_rate: float, cpu: float, note: str = "",
                document_format: str = document_format,
            ) -> None:
                rate = ORDERS / seconds
                rows.append(
                    {
                        "format": document_format,
                        "what is timed": path,
                        "writer": writer,
                        "seconds": seconds,
                        "records/s": rate,
                        "ratio to boto3": rate / base_rate,
                        "client CPU ms / 1000 records": cpu / ORDERS * 1e6,
                        "note": note,
                    }
                )
                print(table(rows[-1:], list(rows[-1])), flush=True)

            add(
                "boto3 Table.batch_writer (1 thread)",
                "write only",
                base["seconds"],
                write_rate,
                base["cpu"],
                f"+{base['convert_seconds']:.1f}s converting to the resource layer's types, not timed{base_spread}",
            )
            for workers in WORKERS:
                ours, spread = _median_run(runs[workers])
                add(
                    f"BatchWriter, {workers} worker(s)" + (" (default)" if workers == 4 else ""),
                    "write only",
                    ours["seconds"],
                    write_rate,
                    ours["cpu"],
                    f"{ours['resubmissions']} resubmissions, {ours['failed']} failed{spread}",
                )
            add(
                "boto3 Table.batch_writer (1 thread)",
                "encode + write",
                base["seconds"] + encode_seconds,
                e2e_rate,
                base["cpu"] + encode_cpu,
                f"encode_record {encode_seconds:.1f}s + write {base['seconds']:.1f}s",
            )
            ours, spread = _median_run(runs["encode"])
            add(
                "BatchWriter, 4 workers (default)",
                "encode + write",
                ours["seconds"],
                e2e_rate,
                ours["cpu"],
                f"encodes inside its worker threads (GIL-bound){spread}",
            )
    print(
        "\nP2 summary (ratio = records/s ÷ boto3's, same format, same timed work)\n" + table(rows, list(rows[0])),
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="P2 BatchWriter vs boto3 batch_writer (see the docstring).")
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS),
                        help="document formats compared (both by default)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of every contender, interleaved; each row is the median run (1)")
    args = parser.parse_args(argv)
    run(tuple(args.formats), args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
