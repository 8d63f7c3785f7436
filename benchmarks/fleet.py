"""Fleet: N connected users on Dagster's own machinery, from registration to one daily schedule tick.

`python -m benchmarks.fleet --users 10 100 1000` (`python -m benchmarks.run fleet` runs 10 and 100).

The instance is production's shape minus the ECS launcher (`shopify_pipeline.local_dagster`): PostgreSQL
(Debian's, `shopify_pipeline.local_postgres`) behind dagster-postgres for run, event-log and schedule storage;
`dagster-daemon` running the queued run coordinator (the repository's dagster.yaml: 10 runs at once, one per
user), the schedule and the sensors; each run a subprocess (DefaultRunLauncher) with the in-process executor.

Per N:
1. N simulator shops (one simulator process, plan plus, time_scale 1): 95 % small (10-60 orders, 3-12 products,
   5-40 customers), every 20th large (1 500 orders, 120 products, 400 customers). N connections in
   `shopify_connections`.
2. Phase 1: the daemon starts; `shopify_connections_sensor` adds the N partitions and requests N initial
   syncs; wait until all finished. (The schedule's cron is 12 hours away.)
3. Each shop changes: 2 orders, 1 product, 1 customer (large shops: 30 orders, 3 products, 10 customers).
   With `--initial engine`, phase 1 is every initial sync by the engine in this process (8 threads), then
   the N partitions added: the sensor then requests nothing, and a 1 000-user fleet is measured without the
   hour of Dagster start-ups its phase 1 costs on 2 cores.
4. Phase 2: the daemon restarts with SHOPIFY_DAILY_SYNC_CRON set to the next whole minute, and DynamoDB
   traffic through a metering proxy (`benchmarks.dynamo_meter`); wait for the N daily runs of that tick.

Measured in phase 2: seconds from the tick (its scheduled time) to the last run's end, and to the last run
enqueued; runs/minute; per run (from the run's events in Postgres): queue wait, process start-up (launched
→ RUN_START: Python, Dagster, the code location, resources), the sum of step durations (the sync work and
the checks), the rest of the run (between steps, event writes); CPU-seconds per run of the daemon with its
code servers and run processes (its process group, sampled every 0.5 s), of PostgreSQL, of DynamoDB Local
and of the simulator (/proc/PID/stat, reaped children included), so other work on a shared machine is not
counted; the peak resident memory of each run process (VmHWM, sampled with the CPU; phase 1's too, when
Dagster runs it: a full sync's, what a run's ECS task must hold); peak PostgreSQL client connections
(pg_stat_activity every 0.25 s) and event-log rows per run; DynamoDB write and read units per shop-day
(every process's requests, with ReturnConsumedCapacity added by the proxy: DynamoDB Local's own computation;
refused conditional writes counted as 1). Also: lease refusals (steps that met LeaseHeldError or
LeaseLostError; 0 expected), two runs of one user overlapping (0 expected), and each user's stored counts
against the shop's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import psycopg2

from benchmarks.common import RemoteSimulator, fresh_settings, header, service_for, shopify_settings, table
from benchmarks.dynamo_meter import CapacityMeter
from shopify_pipeline.defs.partitions import USER_PARTITIONS_NAME
from shopify_pipeline.defs.schedules import DAILY_CRON_VARIABLE
from shopify_pipeline.dynamo.local import LocalDynamoDB
from shopify_pipeline.dynamo.records import RecordTable
from shopify_pipeline.local_dagster import (
    DagsterDaemon,
    daily_cron_at,
    lease_refusals,
    next_whole_minute,
    overlapping_runs,
    run_times,
    write_instance,
)
from shopify_pipeline.local_postgres import LocalPostgres
from shopify_pipeline.settings import DATA_TYPES

DEFAULT_USERS = (10, 100)
LARGE_EVERY = 20
LARGE = {"orders": 1_500, "products": 120, "customers": 400}
CHANGES = {"small": {"orders": 2, "products": 1, "customers": 1},
           "large": {"orders": 30, "products": 3, "customers": 10}}
DONE = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
NO_TICK_YET = timedelta(hours=12)  # phase 1's cron
SCHEDULED_TIME_TAG = ".dagster/scheduled_execution_time"


def shop_configs(n: int) -> list[dict]:
    """N shops, most small, every LARGE_EVERY-th large; sizes vary with the index (deterministic)."""
    shops = []
    for i in range(n):
        size = LARGE if i % LARGE_EVERY == LARGE_EVERY - 1 else {
            "orders": 10 + (i * 7) % 51, "products": 3 + i % 10, "customers": 5 + (i * 3) % 36}
        shops.append({"name": f"f{i:05d}", "token": f"shpat_f{i:05d}", "seed": i, "plan": "plus", **size})
    return shops


class ConnectionPeak:
    """The peak number of client connections to PostgreSQL, polled every 0.25 s from one connection of its own
    (not counted)."""

    def __init__(self, url: str) -> None:
        self._connection = psycopg2.connect(url)
        self._connection.autocommit = True
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> ConnectionPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._connection.close()

    def _poll(self) -> None:
        with self._connection.cursor() as cursor:
            while not self._stop.wait(0.25):
                cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                               "AND pid <> pg_backend_pid()")
                self.peak = max(self.peak, cursor.fetchone()[0])

    def rows(self, sql: str) -> int:
        with self._connection.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchone()[0]


def process_cpu_seconds(pid: int) -> float:
    """CPU-seconds of a process and of the children it has reaped (/proc/PID/stat utime+stime+cutime+cstime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


class GroupCpu:
    """CPU-seconds of every process in one process group (the daemon's: its code servers and run processes),
    sampled from /proc every 0.5 s while the `with` block runs; a process counts with its last sample. Also the
    peak resident memory (VmHWM) of each process whose command line holds `run_marker`: a run's process, which
    DefaultRunLauncher has the code server start with multiprocessing's spawn."""

    def __init__(self, group: int, run_marker: str = "from multiprocessing.spawn") -> None:
        self.group = group
        self.run_marker = run_marker
        self._seen: dict[int, float] = {}
        self.run_peak_kib: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> GroupCpu:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def seconds(self) -> float:
        return sum(self._seen.values())

    def _poll(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        while not self._stop.wait(0.5):
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[2]) == self.group:
                    pid = int(entry.name)
                    self._seen[pid] = (int(fields[11]) + int(fields[12])) / tick
                    self._sample_memory(entry, pid)

    def _sample_memory(self, entry: Path, pid: int) -> None:
        try:
            if self.run_marker not in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                return
            status = (entry / "status").read_text()
        except OSError:
            return
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                self.run_peak_kib[pid] = max(self.run_peak_kib.get(pid, 0), int(line.split()[1]))


def _wait_runs(instance: dg.DagsterInstance, job: str, n: int, daemon: DagsterDaemon, timeout: float) -> list:
    deadline = time.monotonic() + timeout
    last_print = 0.0
    while time.monotonic() < deadline:
        records = instance.get_run_records(dg.RunsFilter(job_name=job))
        done = [r for r in records if r.dagster_run.status in DONE]
        if len(done) >= n:
            return records
        if not daemon.running():
            raise RuntimeError(f"dagster-daemon exited: {daemon.log_tail()}")
        if time.monotonic() - last_print > 60:
            last_print = time.monotonic()
            print(f"  {job}: {len(records)} runs, {len(done)} done", flush=True)
        time.sleep(2)
    raise RuntimeError(f"timed out: {job} has not finished {n} runs within {timeout:.0f} s")


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def _p90(values: list[float]) -> float:
    return sorted(values)[int(0.9 * (len(values) - 1))] if values else 0.0


def fleet(n: int, endpoint: str, dynamodb_pid: int, workdir: Path, submit_workers: int = 0,
          initial_by: str = "dagster") -> dict:
    """One fleet of `n` users through both phases; returns the measured row. `initial_by` "engine" syncs
    phase 1 in this process (threads) and adds the partitions, so the sensor requests nothing: the daily tick
    is measured the same way, without the hour of Dagster start-ups a 1 000-user phase 1 costs on 2 cores."""
    shops = shop_configs(n)
    settings = fresh_settings(endpoint)
    prefix = settings.tables.checkpoints.removesuffix("sync_checkpoints")
    with RemoteSimulator(shops) as sim, LocalPostgres() as pg, CapacityMeter(endpoint) as meter:
        connections = {f"user-{s['name']}": (sim.shop_url(s["name"]), s["token"]) for s in shops}
        service = service_for(settings, shopify_settings(), connections=connections)
        home = write_instance(workdir / f"home{n}", pg.postgres_db(), submit_workers)
        env = {"SHOPIFY_PIPELINE_ENV": "local", "AWS_ENDPOINT_URL_DYNAMODB": endpoint,
               "SHOPIFY_PIPELINE_TABLE_PREFIX": prefix,
               DAILY_CRON_VARIABLE: daily_cron_at(datetime.now(timezone.utc) + NO_TICK_YET)}
        log = workdir / f"daemon{n}.log"
        with dg.DagsterInstance.from_config(str(home)) as instance:
            started = time.monotonic()
            if initial_by == "dagster":
                with ConnectionPeak(pg.url) as peak1, DagsterDaemon(home, env, log) as daemon, \
                        GroupCpu(daemon.pid) as initial_cpu:
                    initial = _wait_runs(instance, "full_sync", n, daemon, timeout=600 + 30 * n)
                initial_peak, initial_rss = peak1.peak, list(initial_cpu.run_peak_kib.values())
                initial_ok = sum(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in initial)
            else:
                initial, initial_peak, initial_rss = [], "-", []
                initial_ok = _initial_by_engine(service, instance, list(connections))
            initial_seconds = time.monotonic() - started
            print(f"  phase 1 ({initial_by}): {n} initial syncs ({initial_ok} succeeded) in {initial_seconds:.0f} s, "
                  f"peak {initial_peak} Postgres connections", flush=True)

            for i, shop in enumerate(shops):
                changes = CHANGES["large" if i % LARGE_EVERY == LARGE_EVERY - 1 else "small"]
                for data_type, count in changes.items():
                    sim.update_records(shop["name"], data_type, n=count, seed=1000 + i)

            events_before = _event_rows(pg.url)
            tick = next_whole_minute()
            cron = daily_cron_at(tick)
            meter.reset()
            cpu_before = _cpu(pg, dynamodb_pid, sim)
            daily_env = {**env, "AWS_ENDPOINT_URL_DYNAMODB": meter.endpoint_url, DAILY_CRON_VARIABLE: cron}
            with ConnectionPeak(pg.url) as peak2, DagsterDaemon(home, daily_env, log) as daemon, \
                    GroupCpu(daemon.pid) as dagster_cpu:
                daily = _wait_runs(instance, "daily_sync", n, daemon, timeout=(tick - datetime.now(timezone.utc))
                                   .total_seconds() + 600 + 30 * n)
                daily_peak = peak2.peak
                events = peak2.rows("SELECT count(*) FROM event_logs") - events_before
            capacity = meter.totals()
            dagster_rss = list(dagster_cpu.run_peak_kib.values())
            cpu = {"dagster": dagster_cpu.seconds / n} | {
                name: (seconds - cpu_before[name]) / n for name, seconds in _cpu(pg, dynamodb_pid, sim).items()}
            daily_ids = [r.dagster_run.run_id for r in daily]
            times = run_times(instance, daily_ids)
            refusals = lease_refusals(instance, daily_ids + [r.dagster_run.run_id for r in initial])
            overlaps = overlapping_runs(run_times(instance, [r.dagster_run.run_id for r in initial]) + times)
            scheduled = [datetime.fromisoformat(r.dagster_run.tags[SCHEDULED_TIME_TAG]).timestamp()
                         for r in daily if r.dagster_run.tags.get(SCHEDULED_TIME_TAG)]
            tick_at = min(scheduled) if scheduled else min(t.enqueued for t in times)
        mismatched = _mismatched_counts(service, settings, shops)
    if n <= 20:  # the timeline of a small fleet, seconds after the tick
        for t in sorted(times, key=lambda t: t.enqueued):
            print(f"  {t.user}: enqueued {t.enqueued - tick_at:6.1f} launched {t.launched - tick_at:6.1f} "
                  f"started {t.started - tick_at:6.1f} ended {t.ended - tick_at:6.1f} steps {t.step_seconds:5.1f}")

    ok = sum(t.status == "SUCCESS" for t in times)
    end = max(t.ended for t in times)
    return {
        "users": n, "submit threads": submit_workers or "-", "daily runs ok": f"{ok}/{n}",
        "tick→all done s": end - tick_at,
        "tick→all enqueued s": max(t.enqueued for t in times) - tick_at,
        "runs/min": n / ((end - tick_at) / 60),
        "queued s (median)": _median([t.queued_seconds for t in times]),
        "start-up s (median/p90)": f"{_median([t.startup_seconds for t in times]):.1f}/"
                                   f"{_p90([t.startup_seconds for t in times]):.1f}",
        "steps s (median)": _median([t.step_seconds for t in times]),
        "run − steps s (median)": _median([t.run_seconds - t.step_seconds for t in times]),
        "peak runs at once": _peak_concurrency(times),
        CPU_COLUMN: "/".join(f"{seconds:.1f}" for seconds in cpu.values()),
        "run peak RSS MB (median/max)": _rss(dagster_rss),
        "initial run peak RSS MB (median/max)": _rss(initial_rss),
        "peak PG conns (daily/initial)": f"{daily_peak}/{initial_peak}",
        "event rows/run": events / n,
        "WCU/shop-day": capacity["write_units"] / n, "RCU/shop-day": capacity["read_units"] / n,
        "lease refusals": len(refusals), "overlapping runs": len(overlaps), "count mismatches": len(mismatched),
        "initial phase s": initial_seconds,
        "_wcu_by_op": capacity["write_units_by_operation"], "_refusals": refusals[:5], "_mismatched": mismatched[:5],
    }


def _initial_by_engine(service, instance: dg.DagsterInstance, users: list[str], threads: int = 8) -> int:
    """Every user's initial sync in this process, `threads` at a time, then their partitions added; returns how
    many succeeded."""
    done = 0
    with ThreadPoolExecutor(threads) as pool:
        for i, result in enumerate(pool.map(lambda user: service.sync(user, "initial"), users), 1):
            done += result.success
            if i % 100 == 0:
                print(f"  phase 1 (engine): {i}/{len(users)} synced", flush=True)
    instance.add_dynamic_partitions(USER_PARTITIONS_NAME, users)
    return done


def _rss(peaks_kib: list[int]) -> str:
    """Median and largest peak RSS of the run processes seen, in MB ("-" when none was sampled)."""
    if not peaks_kib:
        return "-"
    return f"{_median(peaks_kib) * 1024 / 1e6:.0f}/{max(peaks_kib) * 1024 / 1e6:.0f} ({len(peaks_kib)} runs)"


def _peak_concurrency(times: list) -> int:
    """The most runs whose processes ran at the same moment (launch to end)."""
    edges = sorted([(t.launched, 1) for t in times] + [(t.ended, -1) for t in times])
    running = peak = 0
    for _, change in edges:
        running += change
        peak = max(peak, running)
    return peak


def _cpu(pg: LocalPostgres, dynamodb_pid: int, sim: RemoteSimulator) -> dict[str, float]:
    """CPU-seconds so far of PostgreSQL (with its reaped backends), DynamoDB Local and the simulator."""
    return {"postgres": process_cpu_seconds(pg.server_pid()),
            "dynamodb": process_cpu_seconds(dynamodb_pid), "simulator": process_cpu_seconds(sim.process.pid)}


def _event_rows(url: str) -> int:
    with psycopg2.connect(url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM event_logs")
        return cursor.fetchone()[0]


def _mismatched_counts(service, settings, shops: list[dict]) -> list[str]:
    """Users whose stored record counts differ from their shop's."""
    wrong = []
    for shop in shops:
        user = f"user-{shop['name']}"
        for data_type in DATA_TYPES:
            stored = RecordTable(service.engine.dynamodb, settings, data_type).count(user)
            if stored != shop[data_type]:
                wrong.append(f"{user} {data_type}: {stored} stored, {shop[data_type]} in the shop")
    return wrong


CPU_COLUMN = "CPU s/run: dagster/PG/DDB/sim"
COLUMNS = ["users", "submit threads", "daily runs ok", "tick→all done s", "tick→all enqueued s", "runs/min",
           "queued s (median)",
           "start-up s (median/p90)", "steps s (median)", "run − steps s (median)", "peak runs at once", CPU_COLUMN,
           "run peak RSS MB (median/max)", "peak PG conns (daily/initial)", "event rows/run", "WCU/shop-day",
           "RCU/shop-day", "lease refusals", "overlapping runs", "count mismatches", "initial phase s",
           "initial run peak RSS MB (median/max)"]


def run(users: tuple[int, ...] = DEFAULT_USERS, submit_workers: int = 0, initial_by: str = "dagster") -> None:
    header(f"Fleet: {', '.join(map(str, users))} users, Postgres + dagster-daemon, one daily tick"
           f"{f', {submit_workers} submit threads' if submit_workers else ''}, initial syncs by {initial_by}")
    rows = []
    # DynamoDB Local of our own (not $BENCH_DYNAMODB): its CPU time is part of the measurement.
    with LocalDynamoDB() as ddb, tempfile.TemporaryDirectory(prefix="bench-fleet-") as workdir:
        for n in users:
            started = time.monotonic()
            row = fleet(n, ddb.endpoint_url, ddb._process.pid, Path(workdir), submit_workers, initial_by)
            rows.append(row)
            print(table([row], COLUMNS), flush=True)
            print(f"  write units by operation: {row['_wcu_by_op']}; lease refusals {row['_refusals']}; "
                  f"count mismatches {row['_mismatched']}  [{time.monotonic() - started:.0f} s]", flush=True)
    print("\nFleet summary\n" + table(rows, COLUMNS), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, nargs="+", default=list(DEFAULT_USERS), help="fleet sizes to run")
    parser.add_argument("--submit-workers", type=int, default=0,
                        help="threads creating a tick's runs and launching queued runs (default: Dagster's one)")
    parser.add_argument("--initial", choices=("dagster", "engine"), default="dagster",
                        help="phase 1 through the sensor's Dagster runs (default) or by the engine in this process")
    args = parser.parse_args(argv)
    run(tuple(args.users), args.submit_workers, args.initial)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
