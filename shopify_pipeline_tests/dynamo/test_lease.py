"""Leases and fencing against DynamoDB Local: one holder at a time, and a holder that lost it writes nothing."""

import dataclasses
import subprocess
import sys
import time

import pytest

from shopify_pipeline.dynamo.lease import HeldLease, LeaseHeldError, LeaseLostError, LeaseStore, new_owner
from shopify_pipeline.dynamo.state import Checkpoint, StateStore


@pytest.fixture
def leases(client, settings):
    return LeaseStore(client, settings)


def test_a_second_holder_is_refused_until_expiry_and_the_refusal_names_the_fix(leases):
    leases.acquire("u1", "orders", "worker-a", seconds=2)
    with pytest.raises(LeaseHeldError, match=r"worker-a.*clear --user u1 --release-lease"):
        leases.acquire("u1", "orders", "worker-b", seconds=2)
    leases.acquire("u1", "products", "worker-b", seconds=2)  # another data type is free
    leases.acquire("u1", "orders", "worker-a", seconds=2)  # the holder again
    time.sleep(2.2)
    fence_b = leases.acquire("u1", "orders", "worker-b", seconds=60)  # expired: taken over
    assert leases.get("u1", "orders")["owner"] == "worker-b"
    leases.release(fence_b)
    assert leases.get("u1", "orders") is None


def test_a_lease_of_a_dead_process_of_this_host_is_taken_at_once(leases):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # that process has exited: its pid names no process (pids are not reused this fast)
    host, _, _, namespace = new_owner().split(":")
    leases.acquire("u1", "orders", f"{host}:{pid}:abcdef:{namespace}", seconds=600)
    mine = new_owner()
    leases.acquire("u1", "orders", mine, seconds=60)  # no wait, no operator
    with pytest.raises(LeaseHeldError):  # a live process keeps its lease
        leases.acquire("u1", "orders", f"{host}:{pid}:other1:{namespace}", seconds=60)
    # The same pid in another pid namespace (a container sharing the hostname) is not known to be dead.
    leases.acquire("u1", "customers", f"{host}:{pid}:abcdef:{namespace}0", seconds=600)
    with pytest.raises(LeaseHeldError):
        leases.acquire("u1", "customers", mine, seconds=60)


def test_fenced_writes_fail_once_another_holder_took_over(client, settings, leases):
    state = StateStore(client, settings)
    old = leases.acquire("u1", "orders", "worker-a", seconds=1)
    saved = state.save_checkpoint(Checkpoint("u1", "initial", "orders", {"pages": 1}), old)
    state.set_status("u1", "orders", "fetching", "initial", fence=old, page=1)
    time.sleep(1.2)
    new = leases.acquire("u1", "orders", "worker-b", seconds=60)
    with pytest.raises(LeaseLostError, match="lost its lease"):
        state.save_checkpoint(Checkpoint("u1", "initial", "orders", {"pages": 99}, saved.version), old)
    with pytest.raises(LeaseLostError):
        state.set_status("u1", "orders", "failed", "initial", fence=old, message="stale")
    with pytest.raises(LeaseLostError):
        state.clear_checkpoint("u1", "initial", "orders", old)
    with pytest.raises(LeaseLostError):
        leases.check(old)
    with pytest.raises(LeaseLostError):
        leases.renew(old)
    assert state.load_checkpoint("u1", "initial", "orders").state == {"pages": 1}
    assert state.get_status("u1")["orders"]["status"] == "fetching"
    state.save_checkpoint(Checkpoint("u1", "initial", "orders", {"pages": 2}, saved.version), new)  # the holder can
    leases.release(old)  # not the holder: no effect
    assert leases.get("u1", "orders")["owner"] == "worker-b"


def test_a_broken_lease_fences_off_its_holder(client, settings, leases):
    state = StateStore(client, settings)
    fence = leases.acquire("u1", "orders", "worker-a")
    assert leases.break_lease("u1", "orders")
    with pytest.raises(LeaseLostError):
        state.set_status("u1", "orders", "fetching", "initial", fence=fence)
    assert state.get_status("u1") == {}


def test_the_heartbeat_keeps_a_short_lease_alive_and_notices_when_it_is_gone(client, settings):
    short = dataclasses.replace(settings, lease_seconds=1.5)
    leases = LeaseStore(client, short)
    with HeldLease(leases, "u1", "orders", "worker-a", 1.5, 0.3) as held:
        time.sleep(2.5)  # longer than the lease: only renewals keep it
        held.check()
        with pytest.raises(LeaseHeldError):
            leases.acquire("u1", "orders", "worker-b")
        leases.break_lease("u1", "orders")
        time.sleep(0.8)  # a beat finds it gone
        with pytest.raises(LeaseLostError):
            held.check()
    assert leases.get("u1", "orders") is None
