"""P9 webhooks: the sustained webhooks/s our local webhook server applies on this machine, with the p50/p99
delivery-to-DynamoDB latency, at 10× and 100× the event rate of a busy shop and on up to where it stops
keeping up, and 0 lost, in one run.

A busy shop, the assumption: 10 000 orders a day (a Shopify Plus shop selling ~$1M a day at a ~$100 basket;
most Shopify shops take a few orders a day) and 3 order webhooks an order: orders/create when it is placed,
orders/updated when it is paid and when it is fulfilled. That is 30 000 events a day, 0.35 events/s on average.
Sales are not flat: the busiest hour of a normal day carries ~3× the average, a flash sale or Black Friday
~10× (3.5 events/s). So 10× the busy shop (3.5 events/s) is its flash-sale peak, and 100× (35 events/s) is ten
such shops peaking at once on one server, or one shop's peak with tenfold headroom. Products and customers
events (inventory, new customers) come on top in real shops; they take the same path (read back by id, written
conditionally) and are left out.

Set-up: one simulator process (its CPU is not ours) at time_scale 1 serves the busy shop, 4 000 orders on the
"plus" plan, so the handler's read-backs meet Shopify Plus's real GraphQL bucket (20 000 points, 1 000 restored
a second), and a 500-order shop on the "standard" plan (2 000 points, 100/s: most shops). Each has a GraphQL
connection in fresh DynamoDB Local tables (no initial sync: only what the webhooks write is stored), and both
are subscribed (orders/create, orders/updated, orders/delete) to our `WebhookServer` with one `WebhookHandler`
(the app's) in this process. The simulator posts deliveries from its 8 worker threads (Shopify, too, sends
many at once) and counts a delivery not answered 2xx within 5 s as failed, retried ~56 s later (Shopify's
first retry at time_scale 1).

Phases on the busy shop, each followed by waiting until the simulator has nothing left to deliver (retries
included), then one on the Standard shop:
- cold start: the server's first BURST_EVENTS deliveries, all changed within one tick, before this process
  has read anything from the shop. A burst is not a rate: reported apart.
- the rates: a driver thread mutates the shop at a fixed rate for DRIVE_SECONDS (every TICK_SECONDS it creates
  or updates the orders due by then: one create for every two updates, the updates round-robin over a shuffled
  list of the shop's orders, so that no order changes twice within seconds, as real orders do not), in the
  order of MULTIPLES: every rate up to 100× runs; above it the ramp stops at the first rate the server does
  not keep up with.
- last, the same burst on the Standard-plan shop (a bulk edit of 20 orders): its read-backs cost ~440 of its
  2 000 points, so any wait is our own pacing, not Shopify's limit.

The server answers each delivery once its events are in the webhook inbox, and its workers apply them
(`handler.apply`). The handler is wrapped on its instance to timestamp each applied event (when a worker took
it, when it was done: the record is in DynamoDB then) and to time its parts (read-back, upsert, redaction check,
connection read, the Powertools claim and completion, status counters); every read-back's GraphQL answer is
recorded (actual cost, THROTTLED, how long the shop's cost pacer held it).
- latency (delivery to DynamoDB): applied − X-Shopify-Triggered-At (the simulator's clock, on the same
  machine: the moment of the mutation). handler p50/p99: applied − when a worker took the event (the rest is
  the wait in the simulator's queue, our answer and our inbox).
- applied/s: events applied ÷ (last answer − first trigger): the offered rate while the server keeps up, its
  capacity when it does not. latency growth: the least-squares slope of latency over trigger time; a server
  that applies 2% fewer events than arrive has its latency grow 20 ms every second, without end.
- lost: events the simulator made − distinct events applied (failed attempts and dropped beside it);
  then the stored orders are compared with the simulator's: every order touched so far is stored at the
  simulator's current updatedAt (every version has its own), and nothing else is stored.
- the server keeps up: p99 latency (to DynamoDB, not only the answer) < 5 s, 0 failed deliveries, 0 lost,
  latency growth < MAX_GROWTH.
  sustained: it keeps up and the read-backs' GraphQL points/s stay within the shop's restore rate. Above that
  rate the bucket (20 s of restore) pays the excess for a while, then Shopify answers THROTTLED: a 25 s drive
  does not reach that point, so the verdict is computed (how long the bucket lasts is printed).
- who used the CPU: this process (server, handler, driver), the simulator, DynamoDB Local (found by its port)
  and the rest of the machine (other sessions on a shared box), in cores.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from benchmarks.common import RemoteSimulator, dynamodb, fresh_settings, header, service_for, shopify_settings, table
from shopify_pipeline.dynamo.records import RecordTable
from shopify_pipeline.webhooks.handler import WebhookHandler
from shopify_pipeline.webhooks.server import WebhookServer

BUSY_ORDERS_PER_DAY = 10_000
EVENTS_PER_ORDER = 3  # orders/create, orders/updated when paid, orders/updated when fulfilled
BUSY_EVENTS_PER_SECOND = BUSY_ORDERS_PER_DAY * EVENTS_PER_ORDER / 86_400  # 0.347
MULTIPLES = (10, 25, 50, 75, 100, 125, 150, 200, 300, 400, 800)  # × the busy shop, run in this order …
ALWAYS_UP_TO = 100  # … every one up to the 100×, then until the server no longer keeps up
DRIVE_SECONDS = 25.0
# Kept up: latency grows less than this over the drive (s per s; a server applying 2% fewer events than
# arrive has its latency grow by 0.02 s every second, without end).
MAX_GROWTH = 0.02
TICK_SECONDS = 0.1
BURST_EVENTS = 20  # orders changed at once (a bulk edit, a backlog after an outage): all within one tick
ACK_LIMIT_SECONDS = 5.0  # Shopify counts a delivery not answered within 5 s as failed
IDLE_TIMEOUT_SECONDS = 300.0
TIME_SCALE = 1
APP_SECRET = "shpss_p9"  # the app's client secret: every shop's webhooks are signed with it
TOPICS = ("orders/create", "orders/updated", "orders/delete")

PHASES = ("read-back", "upsert", "redaction check", "connection", "claim+complete", "status counters", "other")
INSIDE_ONCE = ("read-back", "upsert", "redaction check", "connection")  # what _apply_once runs besides its claim
_phases = threading.local()  # the phase times of the delivery this server thread is handling


@dataclass
class Answered:
    """One delivery as our server handled it: epoch seconds, and seconds per phase of the handler."""

    event_id: str
    triggered: float
    got: float
    answered: float
    status: int
    result: str
    phases: dict[str, float]


@dataclass
class Read:
    """One read-back answer from the simulator's GraphQL API, and how long the shop's CostPacer held it."""

    actual: float
    throttled: bool
    paced: float


@dataclass
class Shop:
    """A simulated shop, the user connected to it, and the orders its updates go round."""

    name: str
    user: str
    plan: str
    orders: int
    pool: Iterator[int] = iter(())
    touched: set[int] = field(default_factory=set)
    restore: float = 0.0  # GraphQL points restored a second, as the simulator reports it

    def config(self) -> dict:
        return {"name": self.name, "token": f"shpat_{self.name}", "orders": self.orders, "seed": 9,
                "plan": self.plan, "webhook_secret": APP_SECRET}


@dataclass
class Driven:
    """What the driver did at one rate."""

    started: float  # epoch seconds
    seconds: float
    created: list[int] = field(default_factory=list)
    updated: list[int] = field(default_factory=list)

    @property
    def events(self) -> int:
        return len(self.created) + len(self.updated)


class CPU:
    """Cores used by processes (name → pid; "us" is this one) and by the whole machine, between calls."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self._pids = {name: pid for name, pid in pids.items() if pid}
        self._at = self._read()

    def _read(self) -> dict[str, float]:
        ticks = os.sysconf("SC_CLK_TCK")
        seconds = {"at": time.monotonic()}
        for name, pid in self._pids.items():
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            seconds[name] = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
        cpu = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        seconds["machine"] = (sum(cpu) - cpu[3] - cpu[4]) / ticks  # all but idle and iowait, every core
        return seconds

    def cores(self) -> dict[str, float]:
        """Cores used since the last call, per process and for the machine (out of os.cpu_count())."""
        now = self._read()
        elapsed = now["at"] - self._at["at"]
        used = {name: (now[name] - self._at[name]) / elapsed for name in now if name != "at"}
        self._at = now
        return used


def _dynamodb_pid(endpoint: str) -> int | None:
    """The DynamoDB Local serving `endpoint` on this machine (its java command line names the port)."""
    port = endpoint.rsplit(":", 1)[1].encode()
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        jar = any(a.endswith(b"DynamoDBLocal.jar") for a in args)
        if jar and b"-port" in args[:-1] and args[args.index(b"-port") + 1] == port:
            return int(proc.name)
    return None


def _admin(sim: RemoteSimulator, shop: Shop, path: str, body: dict | None = None) -> dict:
    """The simulator's admin API for `shop` (`/_simulator/shops/{name}/{path}`)."""
    request = urllib.request.Request(
        f"{sim.base_url}/_simulator/shops/{shop.name}/{path}", data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"}, method="GET" if body is None else "POST")
    with urllib.request.urlopen(request, timeout=IDLE_TIMEOUT_SECONDS + 60) as answer:
        return json.loads(answer.read())


def _epoch(moment: str) -> float:
    return datetime.fromisoformat(moment.replace("Z", "+00:00")).timestamp()


def _time_phase(owner: object, name: str, phase: str) -> None:
    """Add the time of every `owner.name(…)` call to `phase` of the delivery its thread is handling."""
    original = getattr(owner, name)

    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            times = getattr(_phases, "times", None)
            if times is not None:
                times[phase] = times.get(phase, 0.0) + time.perf_counter() - started

    setattr(owner, name, timed)


def _observe(handler: WebhookHandler, log: list[Answered]) -> None:
    """Record every event the handler applies and where its time went (instance attributes: the server accepts
    a delivery into the inbox and its workers call handler.apply, which calls self._apply_once and self.note;
    _apply calls self.engine.connections.get, self._current, self.compliance.redacted and self.changes.upsert).
    `got` is when the worker took the event, `answered` when it was in DynamoDB."""
    _time_phase(handler, "_apply_once", "once")
    _time_phase(handler, "note", "status counters")
    _time_phase(handler, "_current", "read-back")
    _time_phase(handler.changes, "upsert", "upsert")
    _time_phase(handler.compliance, "redacted", "redaction check")
    _time_phase(handler.engine.connections, "get", "connection")
    apply = handler.apply

    def observed(event: dict, *args, **kwargs) -> dict:
        _phases.times = {}
        got, started = time.time(), time.perf_counter()
        event_id = event["delivery"]  # X-Shopify-Event-Id
        try:
            result = apply(event, *args, **kwargs)
        except Exception as error:  # the worker retries it later: recorded, then re-raised
            _phases.times = None
            log.append(Answered(event_id, _epoch(event["triggered_at"] or ""), got, time.time(), 500,
                                type(error).__name__, {}))
            raise
        total = time.perf_counter() - started
        times, _phases.times = _phases.times, None
        once = times.pop("once", 0.0)
        # Powertools: claim the event id, then record it done.
        times["claim+complete"] = once - sum(times.get(phase, 0.0) for phase in INSIDE_ONCE)
        times["other"] = total - once - times.get("status counters", 0.0)  # the connection map, bookkeeping
        log.append(Answered(event_id, _epoch(event["triggered_at"] or ""), got, time.time(), 200,
                            result["result"], times))
        return result

    handler.apply = observed


def _observe_reads(engine, reads: list[Read]) -> None:
    """Record every GraphQL answer of the handler's read-backs (each builds a source: engine.page_source)."""
    build = engine.page_source

    def observed_source(connection, sync_type=None):
        source = build(connection, sync_type)
        client = source.client
        request_json = client.request_json
        counted = [0.0]  # the client's pacer wait already recorded (GraphQLClient adds it before each request)

        def observed(method: str, url: str, json_body: dict | None = None, paced: bool = True):
            paced_now, counted[0] = client.stats.pace_wait_seconds - counted[0], client.stats.pace_wait_seconds
            document, answer = request_json(method, url, json_body, paced=paced)
            cost = (document.get("extensions") or {}).get("cost") or {}
            codes = [(e.get("extensions") or {}).get("code") for e in document.get("errors") or []
                     if isinstance(e, dict)]
            reads.append(Read(float(cost.get("actualQueryCost") or 0), "THROTTLED" in codes, paced_now))
            return document, answer

        source.client.request_json = observed
        return source

    engine.page_source = observed_source


def _drive(sim: RemoteSimulator, shop: Shop, rate: float, seconds: float, seed: int) -> Driven:
    """Create and update orders of `shop` at `rate` events/s for `seconds`: event k is a create when k % 3 == 0,
    else an update of the next order of its pool."""
    driven = Driven(time.time(), seconds)
    started = time.monotonic()
    total = round(rate * seconds)
    sent = 0
    for tick in itertools.count(1):
        due = min(int(rate * (time.monotonic() - started)) + 1, total)
        creates = sum(1 for k in range(sent, due) if k % EVENTS_PER_ORDER == 0)
        updates = due - sent - creates
        if creates:
            driven.created += _admin(sim, shop, "records/orders/create", {"n": creates, "seed": seed + sent})["ids"]
        if updates:
            ids = [next(shop.pool) for _ in range(updates)]
            driven.updated += _admin(sim, shop, "records/orders/update", {"ids": ids})["ids"]
        sent = due
        if sent >= total:
            break
        time.sleep(max(0.0, started + tick * TICK_SECONDS - time.monotonic()))
    driven.seconds = time.monotonic() - started
    shop.touched |= {*driven.created, *driven.updated}
    return driven


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (time, value) points."""
    n = len(points)
    if n < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / spread if spread else 0.0


def _stored_check(sim: RemoteSimulator, engine, shop: Shop) -> dict:
    """The shop's touched orders stored at the simulator's current version (updatedAt), the rest, and strays."""
    truth = {int(k): _epoch(v) for k, v in _admin(sim, shop, "records/orders/versions")["versions"].items()}
    stored = {int(doc["legacyResourceId"]): _epoch(doc["updatedAt"])
              for doc in RecordTable(engine.dynamodb, engine.settings, "orders").documents(shop.user)}
    touched = shop.touched
    equal = sum(1 for i in touched if i in stored and stored[i] == truth.get(i))
    return {"shop": shop.name, "orders touched so far": len(touched), "stored at the simulator's updatedAt": equal,
            "missing or another version": len(touched) - equal, "stored, never touched": len(stored.keys() - touched)}


def _rows(label: str, rate: float | None, driven: Driven, answered: list[Answered], stats: dict, reads: list[Read],
          cores: dict[str, float], restore: float) -> tuple[dict, dict]:
    """(throughput and latency, where the time went) of one rate."""
    first: dict[str, Answered] = {}
    for a in answered:
        if a.status == 200 and a.event_id not in first:
            first[a.event_id] = a
    applied = sorted(first.values(), key=lambda a: a.triggered)
    latency = [a.answered - a.triggered for a in applied]
    handling = [a.answered - a.got for a in applied]
    drive_end = driven.started + driven.seconds
    span = max(a.answered for a in applied) - min(a.triggered for a in applied) if applied else float("nan")
    growth = _slope([(a.triggered, a.answered - a.triggered) for a in applied])
    lost = stats["events"] - len(applied)
    p99 = _percentile(latency, 0.99)
    keeps_up = p99 < ACK_LIMIT_SECONDS and lost == 0 and stats["failed_attempts"] == 0 and growth < MAX_GROWTH
    results: dict[str, int] = {}
    for a in applied:
        results[a.result] = results.get(a.result, 0) + 1
    n = max(len(applied), 1)
    held = [r.paced for r in reads if r.paced > 0.01]
    points = sum(r.actual for r in reads) / n
    share = None if rate is None else rate * points / restore  # of the shop's GraphQL restore rate
    if not keeps_up:
        sustained = "no"
    elif share is not None and share > 1:
        # The bucket (20 s of restore) pays the excess for a while; then Shopify answers THROTTLED.
        sustained = f"no: over the restore; the bucket lasts ~{20 * restore / (rate * points - restore):.0f} s"
    else:
        sustained = "yes"
    latencies = {
        "rate": label,
        "offered events/s": driven.events / driven.seconds,
        "events": stats["events"],
        "applied/s": len(applied) / span if applied else 0.0,
        "latency growth ms/s": 1000 * growth,
        "p50 s": _percentile(latency, 0.5),
        "p99 s": p99,
        "max s": max(latency, default=float("nan")),
        "handler p50 / p99 s": f"{_percentile(handling, 0.5):.3f} / {_percentile(handling, 0.99):.3f}",
        "after last change s": max((a.answered for a in applied), default=drive_end) - drive_end,
        "lost": lost,
        "failed / dropped": f"{stats['failed_attempts']} / {stats['dropped']}",
        "results": ", ".join(f"{k} {v}" for k, v in sorted(results.items())),
        "server keeps up": "yes" if keeps_up else "no",
        "sustained": sustained,
    }
    where = {"rate": label, "handler mean ms": 1000 * sum(handling) / n}
    where.update({f"{phase} ms": 1000 * sum(a.phases.get(phase, 0.0) for a in applied) / n for phase in PHASES})
    others = cores["machine"] - sum(v for k, v in cores.items() if k != "machine")
    where.update({
        "GraphQL points/event": points,
        "THROTTLED": sum(r.throttled for r in reads),
        "reads held by the pacer (longest s)": f"{len(held)} ({max(held, default=0.0):.1f})",
        "share of the shop's restore at this rate": "n/a" if share is None else f"{share:.2f}",
        "cores: ours": cores.get("us", 0.0),
        "simulator": cores.get("simulator", 0.0),
        "DynamoDB Local": cores.get("dynamodb", float("nan")),
        "rest of machine": others,
    })
    return latencies, where


def _failures(sim: RemoteSimulator, shop: Shop, since: float) -> str:
    """The shop's failed delivery attempts since `since` (epoch seconds), counted by status or error."""
    counts: dict[str, int] = {}
    for attempt in _admin(sim, shop, "webhook_attempts")["attempts"]:
        if attempt["at"] >= since and not (attempt["status"] and 200 <= attempt["status"] < 300):
            reason = str(attempt["status"]) if attempt["status"] else (attempt["error"] or "")[:60]
            counts[reason] = counts.get(reason, 0) + 1
    return "; ".join(f"{n} × {reason}" for reason, n in sorted(counts.items()))


def _delta(after: dict, before: dict) -> dict:
    return {k: after[k] - before.get(k, 0) for k in ("events", "delivered", "failed_attempts", "dropped", "retries")}


def run() -> None:
    header("P9 webhooks applied per second")
    busy = Shop("busy", "busy-user", "plus", 4_000)  # the busy shop: Shopify Plus
    basic = Shop("basic", "basic-user", "standard", 500)  # most shops: the Standard bucket (2 000 points, 100/s)
    burst = f"a burst of {BURST_EVENTS} events"
    phases = [(f"cold start: {burst}", busy, None, BURST_EVENTS / TICK_SECONDS, TICK_SECONDS)]
    phases += [(f"{m}× ({m * BUSY_EVENTS_PER_SECOND:.1f}/s)", busy, m, m * BUSY_EVENTS_PER_SECOND, DRIVE_SECONDS)
               for m in MULTIPLES]
    phases.append((f"Standard-plan shop: {burst}", basic, None, BURST_EVENTS / TICK_SECONDS, TICK_SECONDS))
    print(f"A busy shop: {BUSY_ORDERS_PER_DAY:,} orders/day × {EVENTS_PER_ORDER} order events (create, paid, "
          f"fulfilled) = {BUSY_EVENTS_PER_SECOND:.3f} events/s on average, ~10× that at a flash-sale peak; on Shopify "
          f"Plus ({busy.orders} orders here; GraphQL bucket 20 000 points, 1 000/s, time_scale {TIME_SCALE}). "
          f"Phases: the server's first deliveries ({burst} within {TICK_SECONDS} s); each rate driven for "
          f"{DRIVE_SECONDS:.0f} s: {', '.join(p[0] for p in phases if p[2])}, in order (all up to {ALWAYS_UP_TO}×, "
          f"then until the server no longer keeps up); last, {burst} on a fresh Standard-plan shop (2 000 points, "
          "100/s). The simulator posts from 8 worker threads and fails a delivery not answered in "
          f"{ACK_LIMIT_SECONDS:.0f} s (retried ~56 s later: Shopify's first retry).", flush=True)
    latencies: list[dict] = []
    wheres: list[dict] = []
    checks: list[dict] = []
    with dynamodb() as endpoint, RemoteSimulator([busy.config(), basic.config()], time_scale=TIME_SCALE) as sim:
        connections = {shop.user: (sim.shop_url(shop.name), sim.tokens[shop.name]) for shop in (busy, basic)}
        service = service_for(fresh_settings(endpoint), shopify_settings(), connections=connections)
        handler = WebhookHandler(service.engine, APP_SECRET)
        answered: list[Answered] = []
        reads: list[Read] = []
        _observe(handler, answered)
        _observe_reads(service.engine, reads)
        for shop in (busy, basic):
            ids = [int(i) for i in _admin(sim, shop, "records/orders/versions")["versions"]]
            random.Random(9).shuffle(ids)
            shop.pool = itertools.cycle(ids)
            shop.restore = sim.stats(shop.name)["graphql_throttle_status"]["restoreRate"]
        cpu = CPU({"us": os.getpid(), "simulator": sim.process.pid, "dynamodb": _dynamodb_pid(endpoint)})
        with WebhookServer(handler) as server:
            for shop in (busy, basic):
                for topic in TOPICS:
                    _admin(sim, shop, "webhook_subscribe", {"topic": topic, "url": server.url})
            ramp_over = False
            for number, (label, shop, multiple, rate, seconds) in enumerate(phases):
                if multiple is not None and ramp_over:
                    continue
                answered.clear()
                reads.clear()
                before = _admin(sim, shop, "webhooks")["stats"]
                cpu.cores()
                driven = _drive(sim, shop, rate, seconds, number * 1_000_000)
                idle = _admin(sim, shop, "webhook_idle", {"timeout": IDLE_TIMEOUT_SECONDS})["idle"]
                idle = server.wait_idle(IDLE_TIMEOUT_SECONDS) and idle  # delivered, and applied from the inbox
                cores = cpu.cores()
                stats = _delta(_admin(sim, shop, "webhooks")["stats"], before)
                latency, where = _rows(label, None if multiple is None else rate, driven, list(answered), stats,
                                       list(reads), cores, shop.restore)
                if stats["failed_attempts"]:
                    latency["failed / dropped"] += f" ({_failures(sim, shop, driven.started)})"
                if multiple is None:
                    latency.update({"latency growth ms/s": "n/a", "server keeps up": "n/a", "sustained": "n/a: burst"})
                elif not idle:
                    latency.update({"server keeps up": "no", "sustained": "no: deliveries still pending"})
                latencies.append(latency)
                wheres.append(where)
                checks.append({"after": label, **_stored_check(sim, service.engine, shop)})
                print(f"{label}: {latency['applied/s']:.1f} applied/s, p50 {latency['p50 s']:.3f} s, p99 "
                      f"{latency['p99 s']:.3f} s, lost {latency['lost']}, failed {latency['failed / dropped']}, "
                      f"sustained {latency['sustained']}", flush=True)
                ramp_over |= multiple is not None and multiple >= ALWAYS_UP_TO and latency["server keeps up"] != "yes"
        final = {shop.name: _admin(sim, shop, "webhooks")["stats"] for shop in (busy, basic)}
    load = os.getloadavg()

    print("\nP9 webhooks per phase (latency: our answer − X-Shopify-Triggered-At; the server keeps up: p99 < 5 s, "
          f"0 failed, 0 lost, latency growth < {1000 * MAX_GROWTH:.0f} ms/s; sustained: it keeps up and the read-backs "
          "stay within the shop's GraphQL restore rate)\n" + table(latencies, list(latencies[0])), flush=True)
    print("\nWhere the handler's time went (mean per event) and who used the CPU during each phase\n"
          + table(wheres, list(wheres[0])), flush=True)
    print("\nStored orders against the simulator's, after each phase\n" + table(checks, list(checks[0])), flush=True)
    rated = [(latency, where) for latency, where in zip(latencies, wheres, strict=True)
             if latency["sustained"] != "n/a: burst"]
    points = sum(where["GraphQL points/event"] for _, where in rated) / len(rated)
    print(f"\nGraphQL: {points:.1f} points per read-back; Plus's restore of {busy.restore:.0f} points/s caps the "
          f"read-backs of one shop at {busy.restore / points:.0f} events/s once its {20 * busy.restore:.0f}-point "
          f"bucket is spent; Standard's {basic.restore:.0f} points/s at {basic.restore / points:.1f} events/s.")
    for name, stats in final.items():
        print(f"Whole run, shop {name}: {stats['events']} events, {stats['delivered']} delivered, "
              f"{stats['failed_attempts']} failed attempts, {stats['dropped']} dropped.")
    print(f"Load average at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min; "
          f"{os.cpu_count()} cores).")
    for verdict, name in (("server keeps up", "Highest rate the server keeps up with"),
                          ("sustained", "Highest rate sustained on Shopify Plus")):
        best = [latency for latency, _ in rated if latency[verdict] == "yes"]
        if best:
            print(f"{name}: {best[-1]['rate']}: {best[-1]['applied/s']:.1f} events/s applied, "
                  f"p50 {best[-1]['p50 s']:.3f} s, p99 {best[-1]['p99 s']:.3f} s.", flush=True)
