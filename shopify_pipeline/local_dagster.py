"""A production-shaped Dagster instance on this machine, for the fleet tests and benchmarks: PostgreSQL storage
(dagster-postgres), `dagster-daemon` running the run queue, the schedule and the sensors, and each run in its
own process (DefaultRunLauncher) with the in-process executor.

The instance's `dagster.yaml` is the repository's own with a `storage` block and the run launcher added
(`fleet_instance_config`), so its queue limits are the ones `dagster dev` and deployments use; a deployment
swaps the launcher for its container launcher (docs/production.md). One addition: `op_granularity_run_buffer`.
Without it the queue launches a run only while the `shopify_api` pool (default_limit 4) has a free slot for
each of the run's three root fetch steps, counting runs launched in the last 5 s as holding them: about one
launch per coordinator pass, whatever `max_concurrent_runs` says (measured: 10 runs of tiny shops took
146-187 s). The buffer lets `max_concurrent_runs` runs be launched; their fetch steps still take the pool's
slots one at a time, so at most `default_limit` fetch steps run at once, as before.

    with LocalPostgres() as pg:
        home = write_instance(tmp / "home", pg.postgres_db())
        with DagsterDaemon(home, env) as daemon:
            ...
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import yaml

from shopify_pipeline.errors import PermanentError

ROOT = Path(__file__).resolve().parents[1]
REPO_INSTANCE = ROOT / "dagster.yaml"
WORKSPACE = ROOT / "workspace.yaml"
DEFAULT_RUN_LAUNCHER = {"module": "dagster.core.launcher", "class": "DefaultRunLauncher"}
ROOT_FETCH_STEPS = 3  # shopify/{orders,products,customers}_pages, in the shopify_api pool
LEASE_ERRORS = frozenset({"LeaseHeldError", "LeaseLostError"})


class LocalDagsterError(PermanentError):
    """The local daemon could not be started or a job could not be launched; the message says why."""


def fleet_instance_config(postgres_db: Mapping[str, object], base: Path = REPO_INSTANCE,
                          submit_workers: int = 0) -> dict:
    """The repository's dagster.yaml (queue, tag limits, pools, run retries) with run, event-log and schedule
    storage in PostgreSQL and runs launched as local processes.

    `submit_workers` > 0 adds Dagster's threaded submission: the schedule's and sensors' run requests of one
    tick created by that many threads, and the queue launching that many runs at once. Without it each is
    one at a time, and DefaultRunLauncher's launch waits for the run process to load the code."""
    if not base.exists():
        raise LocalDagsterError(f"{base} not found: the fleet instance is built from the repository's dagster.yaml")
    config = yaml.safe_load(base.read_text())
    config["storage"] = {"postgres": {"postgres_db": dict(postgres_db)}}
    config["run_launcher"] = dict(DEFAULT_RUN_LAUNCHER)
    concurrency = config.setdefault("concurrency", {})
    max_runs = concurrency.get("runs", {}).get("max_concurrent_runs", 10)
    # Each run has one root fetch step per data type in the pool (see the module's docstring).
    concurrency.setdefault("pools", {}).setdefault("op_granularity_run_buffer", max_runs * ROOT_FETCH_STEPS)
    if submit_workers:
        config["run_coordinator"]["config"] = {"dequeue_use_threads": True, "dequeue_num_workers": submit_workers}
        for daemon in ("schedules", "sensors"):
            config[daemon] = {"use_threads": True, "num_workers": 1, "num_submit_workers": submit_workers}
    return config


def write_instance(home: Path, postgres_db: Mapping[str, object], submit_workers: int = 0) -> Path:
    """A DAGSTER_HOME at `home` holding the fleet instance's dagster.yaml; returns `home`."""
    home.mkdir(parents=True, exist_ok=True)
    config = fleet_instance_config(postgres_db, submit_workers=submit_workers)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return home


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


class DagsterDaemon:
    """`dagster-daemon run` on the project's workspace with DAGSTER_HOME=`home`, for the `with` block.

    `env` is added to this process's environment (the resources' variables: SHOPIFY_PIPELINE_ENV,
    AWS_ENDPOINT_URL_DYNAMODB, …); the daemon's code server and every run process inherit it."""

    def __init__(self, home: Path, env: Mapping[str, str], log_path: Path, start_timeout: float = 120.0) -> None:
        self.home = home
        self.env = {**os.environ, **env, "DAGSTER_HOME": str(home)}
        self.log_path = log_path
        self.start_timeout = start_timeout
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> DagsterDaemon:
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen([_bin("dagster-daemon"), "run", "-w", str(WORKSPACE)], cwd=ROOT,
                                         env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        """The daemon's process id, also the id of the process group of its code servers and runs."""
        return self._process.pid

    def running(self) -> bool:
        """Whether the daemon process still runs (its log says why not)."""
        return self._process is not None and self._process.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def __exit__(self, *exc: object) -> None:
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGINT)  # the daemon stops its threads and its code server
            try:
                self._process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()
        if self._process is not None:
            # Code servers and run processes are in the daemon's group; one still busy ignores the SIGINT.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
        self._process = None
        self._log.close()


def daily_cron_at(at: datetime) -> str:
    """A cron string for SHOPIFY_DAILY_SYNC_CRON that fires at `at`'s minute (UTC) once a day. A test needs
    exactly one tick: a schedule's run key dedupes only re-evaluations of one tick, so `* * * * *` would
    launch every user's daily run again each minute."""
    at = at.astimezone(timezone.utc)
    return f"{at.minute} {at.hour} * * *"


def next_whole_minute(lead_seconds: float = 60.0) -> datetime:
    """The first whole minute (UTC) at least `lead_seconds` from now: time for a daemon to start and load the
    code before its tick."""
    return (datetime.now(timezone.utc) + timedelta(seconds=lead_seconds + 59)).replace(second=0, microsecond=0)


def launch_job(home: Path, env: Mapping[str, str], job: str, run_config: Mapping, tags: Mapping[str, str]) -> str:
    """Submit a run of `job` to the instance's run coordinator (`dagster job launch`, as an operator would);
    with the queued coordinator it waits in the queue until the daemon starts it. Returns the run id."""
    run_id = str(uuid.uuid4())
    done = subprocess.run(
        [_bin("dagster"), "job", "launch", "-w", str(WORKSPACE), "-j", job, "--config-json", json.dumps(run_config),
         "--tags", json.dumps(dict(tags)), "--run-id", run_id],
        cwd=ROOT, env={**os.environ, **env, "DAGSTER_HOME": str(home)}, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise LocalDagsterError(f"dagster job launch {job} failed: {(done.stderr or done.stdout)[-2000:]}")
    return run_id


@dataclass(frozen=True)
class RunTimes:
    """Where one run's time went, from its events in the event log (seconds)."""

    run_id: str
    user: str
    status: str
    enqueued: float
    launched: float  # the coordinator took it from the queue and the launcher started its process
    started: float  # the run process loaded the code and began executing (RUN_START)
    ended: float
    step_seconds: float  # the sum of the run's step durations (STEP_START to STEP_SUCCESS/FAILURE)

    @property
    def queued_seconds(self) -> float:
        return self.launched - self.enqueued

    @property
    def startup_seconds(self) -> float:
        """Process start-up: Python, Dagster and the code location loaded, the run's resources built."""
        return self.started - self.launched

    @property
    def run_seconds(self) -> float:
        return self.ended - self.started


def run_times(instance, run_ids: Iterable[str]) -> list[RunTimes]:
    """RunTimes of each run, read from the instance's event log."""
    import dagster as dg

    kinds = {dg.DagsterEventType.RUN_ENQUEUED, dg.DagsterEventType.RUN_STARTING, dg.DagsterEventType.RUN_START,
             dg.DagsterEventType.RUN_SUCCESS, dg.DagsterEventType.RUN_FAILURE, dg.DagsterEventType.STEP_START,
             dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE}
    times = []
    for run_id in run_ids:
        run = instance.get_run_by_id(run_id)
        stamps: dict[str, float] = {}
        step_start: dict[str, float] = {}
        step_seconds = 0.0
        for entry in instance.all_logs(run_id, of_type=kinds):
            kind = entry.dagster_event.event_type
            if kind == dg.DagsterEventType.STEP_START:
                step_start[entry.step_key] = entry.timestamp
            elif kind in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
                step_seconds += entry.timestamp - step_start.pop(entry.step_key, entry.timestamp)
            else:
                stamps.setdefault(kind.value, entry.timestamp)
        ended = stamps.get("PIPELINE_SUCCESS", stamps.get("PIPELINE_FAILURE", 0.0))
        times.append(RunTimes(run_id, run.tags.get("shopify/user") or run.tags.get("dagster/partition", ""),
                              run.status.value, stamps.get("PIPELINE_ENQUEUED", 0.0),
                              stamps.get("PIPELINE_STARTING", 0.0), stamps.get("PIPELINE_START", 0.0), ended,
                              step_seconds))
    return times


def overlapping_runs(times: Iterable[RunTimes]) -> list[tuple[str, str, str]]:
    """(user, run, run) for every two runs of one user whose processes overlapped (launch to end)."""
    by_user: dict[str, list[RunTimes]] = {}
    for run in times:
        by_user.setdefault(run.user, []).append(run)
    overlaps = []
    for user, runs in by_user.items():
        runs.sort(key=lambda r: r.launched)
        overlaps += [(user, a.run_id, b.run_id) for a, b in itertools.pairwise(runs) if b.launched < a.ended]
    return overlaps


def lease_refusals(instance, run_ids: Iterable[str]) -> list[str]:
    """Steps that met a lease held by another sync (LeaseHeldError) or lost theirs (LeaseLostError): the
    engine's DynamoDB lease is the second line behind Dagster's one-run-per-user limit, so 0 when the limit
    holds. Each entry is `run_id step_key error`."""
    import dagster as dg

    found = []
    kinds = {dg.DagsterEventType.STEP_UP_FOR_RETRY, dg.DagsterEventType.STEP_FAILURE}
    for run_id in run_ids:
        for entry in instance.all_logs(run_id, of_type=kinds):
            event = entry.dagster_event
            data = event.event_specific_data
            error = getattr(data, "error", None)
            names = _error_classes(error)
            if names & LEASE_ERRORS:
                found.append(f"{run_id} {event.step_key} {sorted(names & LEASE_ERRORS)[0]}")
    return found


def _error_classes(error) -> set[str]:
    names = set()
    while error is not None:
        names.add(error.cls_name or "")
        names |= _error_classes(error.context) if error.context is not error.cause else set()
        error = error.cause
    return names


def wait_for(predicate, timeout: float, what: str, every: float = 1.0, alive=None):
    """Poll `predicate` until it returns something truthy (returned); AssertionError after `timeout` s, or at
    once when `alive()` says a needed process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if alive is not None and not alive():
            raise AssertionError(f"a process died while waiting for {what}")
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
