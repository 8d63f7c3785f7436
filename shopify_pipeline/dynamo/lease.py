"""Leases with fencing: one sync per (user, data type), and a sync that lost its lease changes nothing.

The lease item (`lease_{dataType}` in `sync_checkpoints`) names its holder and a fencing token that is
new for every acquisition. The holder renews it from a heartbeat thread (`HeldLease`), so a short lease
(60 s by default) is enough for a sync of any length and a crashed sync blocks the next one for at most
that long (at once, when the holder was a process of this host that no longer exists).

A sync can still lose its lease: its process was frozen past the expiry (a VM pause, SIGSTOP, a long
GC) and another sync took over, or an operator broke the lease. Fencing makes that harmless: every
write another sync relies on either is a transaction whose ConditionCheck requires our token on the
lease item (checkpoint, status, failed batches, high-water mark: `fenced_write`), or comes right after
a consistent read of that token (staged pages and record batches, too large for a cheap transaction:
`HeldLease.check`). The loser finds out at its next write and stops with `LeaseLostError`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from botocore.exceptions import ClientError

from shopify_pipeline.dynamo.client import ConditionFailedError, DynamoRequestError, error_code, translate_errors
from shopify_pipeline.dynamo.codec import deserialize
from shopify_pipeline.errors import TransientError
from shopify_pipeline.settings import Settings

log = logging.getLogger(__name__)

_TRANSACT = {"put_item": "Put", "update_item": "Update", "delete_item": "Delete"}
_CONFLICT_TRIES = 4  # a fenced write cancelled by a conflicting transaction is tried again this often


class LeaseHeldError(TransientError):
    """Another sync of the same user and data type is running (or died less than a lease ago).

    `expires_in` is how long the holder's lease still runs unless renewed: a retry sooner cannot succeed."""

    def __init__(self, message: str, expires_in: float = 0.0) -> None:
        super().__init__(message)
        self.expires_in = expires_in


class LeaseLostError(TransientError):
    """This sync no longer holds its lease: another sync took over, so this one must change nothing."""


@dataclass(frozen=True)
class Fence:
    """Proof of holding one lease: its item's key and the token of our acquisition."""

    table: str
    key: dict
    token: str
    user_id: str
    data_type: str

    def lost(self, why: str) -> LeaseLostError:
        return LeaseLostError(
            f"the sync of {self.data_type} for user {self.user_id} lost its lease ({why}); another sync has "
            "taken over, so this one stopped without writing anything more. Nothing is lost: the sync "
            "holding the lease carries on from the checkpoint."
        )


def new_owner() -> str:
    """`host:pid:nonce:pidns`: unique per engine, and telling whether the holder is a dead process of this
    host (the pid namespace too: containers may share a hostname while their pids are worlds apart)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}:{_pid_namespace()}"


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "?"


def _dead_local_process(owner: str) -> bool:
    """Whether `owner` was a process of this host and pid namespace that no longer exists (its lease can
    be taken at once). Unknown owners, other hosts and other namespaces: no (wait for the expiry)."""
    parts = owner.split(":")
    if len(parts) != 4 or parts[0] != socket.gethostname() or parts[3] in ("?", "") or parts[3] != _pid_namespace():
        return False
    if not parts[1].isdigit() or int(parts[1]) == os.getpid():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, under another user
        return False
    return False


class LeaseStore:
    """Acquire, renew, check, release and break the leases in the checkpoints table."""

    def __init__(self, client, settings: Settings) -> None:
        self._client = client
        self._settings = settings
        self._table = settings.tables.checkpoints

    def _key(self, user_id: str, data_type: str) -> dict:
        return {"userId": {"S": user_id}, "syncType": {"S": f"lease_{data_type}"}}

    def _call(self, operation: str, **kwargs) -> dict:
        with translate_errors(self._table, self._client.meta.endpoint_url):
            return getattr(self._client, operation)(TableName=self._table, **kwargs)

    def acquire(self, user_id: str, data_type: str, owner: str, seconds: float | None = None) -> Fence:
        """Take the lease on (user, data type) with a new fencing token.

        Succeeds when it is free, expired, ours, or held by a dead process of this host. Raises
        LeaseHeldError otherwise, naming the holder and the command that breaks a lease.
        """
        seconds = seconds or self._settings.lease_seconds
        key = self._key(user_id, data_type)
        token = uuid.uuid4().hex
        now = time.time()
        item = {**key, "owner": {"S": owner}, "token": {"S": token}, "expiresAt": {"N": f"{now + seconds:.3f}"},
                "acquiredAt": {"S": _iso(now)}, "ttl": {"N": str(int(now + seconds + 86400))}}
        try:
            self._call("put_item", Item=item,
                       ConditionExpression="attribute_not_exists(userId) OR #o = :me OR expiresAt < :now",
                       ExpressionAttributeNames={"#o": "owner"},
                       ExpressionAttributeValues={":me": {"S": owner}, ":now": {"N": f"{now:.3f}"}})
        except ConditionFailedError as error:
            held = self.get(user_id, data_type) or {}
            holder = str(held.get("owner", ""))
            if not (holder and _dead_local_process(holder) and self._take_from(item, holder)):
                raise LeaseHeldError(
                    f"a sync of {data_type} for user {user_id} is already running (owner {holder or '?'}, "
                    f"lease until {_iso(held.get('expiresAt'))}, renewed while it runs). Wait for it to finish. "
                    f"If its process died on another host, the lease expires within "
                    f"{self._settings.lease_seconds:.0f} s, or break it now with "
                    f"`shopify-pipeline clear --user {user_id} --release-lease`.",
                    expires_in=max(0.0, float(held.get("expiresAt") or now) - time.time()),
                ) from error
            log.warning("took over the lease of %s %s from %s, a process of this host that no longer runs",
                        user_id, data_type, holder)
        return Fence(self._table, key, token, user_id, data_type)

    def _take_from(self, item: dict, holder: str) -> bool:
        try:
            self._call("put_item", Item=item, ConditionExpression="#o = :dead",
                       ExpressionAttributeNames={"#o": "owner"}, ExpressionAttributeValues={":dead": {"S": holder}})
        except ConditionFailedError:
            return False
        return True

    def renew(self, fence: Fence, seconds: float | None = None) -> None:
        """Push the expiry out by `seconds`; LeaseLostError if the lease is no longer ours."""
        seconds = seconds or self._settings.lease_seconds
        now = time.time()
        try:
            self._call("update_item", Key=fence.key, UpdateExpression="SET expiresAt = :e, #ttl = :ttl",
                       ConditionExpression="#tok = :t", ExpressionAttributeNames={"#tok": "token", "#ttl": "ttl"},
                       ExpressionAttributeValues={":t": {"S": fence.token}, ":e": {"N": f"{now + seconds:.3f}"},
                                                  ":ttl": {"N": str(int(now + seconds + 86400))}})
        except ConditionFailedError:
            raise fence.lost("its renewal found another holder or none") from None

    def check(self, fence: Fence) -> None:
        """A consistent read of the lease: LeaseLostError unless it still carries our token."""
        item = self._call("get_item", Key=fence.key, ConsistentRead=True, ProjectionExpression="#tok",
                          ExpressionAttributeNames={"#tok": "token"}).get("Item")
        if not item or item["token"]["S"] != fence.token:
            raise fence.lost("a check before writing found another holder or none")

    def release(self, fence: Fence) -> None:
        """Give the lease back if it is still ours (a no-op when someone else holds it now)."""
        with contextlib.suppress(ConditionFailedError):
            self._call("delete_item", Key=fence.key, ConditionExpression="#tok = :t",
                       ExpressionAttributeNames={"#tok": "token"}, ExpressionAttributeValues={":t": {"S": fence.token}})

    def get(self, user_id: str, data_type: str) -> dict[str, Any] | None:
        """The lease item as plain values (owner, expiresAt epoch seconds, acquiredAt), or None."""
        item = self._call("get_item", Key=self._key(user_id, data_type), ConsistentRead=True).get("Item")
        return {k: deserialize(v) for k, v in item.items() if k != "token"} if item else None

    def is_live(self, user_id: str, data_type: str) -> bool:
        """Whether someone holds an unexpired lease on (user, data type)."""
        held = self.get(user_id, data_type)
        return bool(held) and float(held["expiresAt"]) > time.time()

    def break_lease(self, user_id: str, data_type: str) -> bool:
        """Remove the lease whoever holds it (an operator's command after a sync process died).

        Safe even if the holder is alive: its next write is refused (fencing). Returns whether one existed."""
        old = self._call("delete_item", Key=self._key(user_id, data_type), ReturnValues="ALL_OLD")
        return "Attributes" in old


class FencedWriteCancelledError(TransientError):
    """DynamoDB cancelled a fenced write for a passing reason (a conflicting transaction, throttling)."""


def fenced_write(client, fence: Fence | None, operation: str, **kwargs) -> None:
    """`operation` (put_item, update_item or delete_item with its usual arguments, TableName included),
    applied only while `fence` still holds its lease: one transaction with a ConditionCheck on the lease.

    Without a fence, the plain call. Raises LeaseLostError when the lease is gone, ConditionFailedError
    when the operation's own condition failed.
    """
    table = kwargs["TableName"]
    if fence is None:
        with translate_errors(table, client.meta.endpoint_url):
            getattr(client, operation)(**kwargs)
        return
    check = {"TableName": fence.table, "Key": fence.key, "ConditionExpression": "#tok = :fence",
             "ExpressionAttributeNames": {"#tok": "token"},
             "ExpressionAttributeValues": {":fence": {"S": fence.token}}}
    for attempt in range(_CONFLICT_TRIES):
        try:
            with translate_errors(table, client.meta.endpoint_url):
                client.transact_write_items(
                    TransactItems=[{_TRANSACT[operation]: kwargs}, {"ConditionCheck": check}])
            return
        except DynamoRequestError as error:
            cause = error.__cause__
            if not (isinstance(cause, ClientError) and error_code(cause) == "TransactionCanceledException"):
                raise
            reasons = [reason.get("Code") for reason in cause.response.get("CancellationReasons", [])]
        if len(reasons) > 1 and reasons[1] == "ConditionalCheckFailed":
            raise fence.lost("a fenced write found another holder or none")
        if reasons and reasons[0] == "ConditionalCheckFailed":
            raise ConditionFailedError(f"condition failed on table {table!r}")
        if attempt + 1 < _CONFLICT_TRIES:  # e.g. the heartbeat renewing the lease item at that moment
            time.sleep(random.uniform(0, 0.05 * 2**attempt))
    raise FencedWriteCancelledError(
        f"DynamoDB cancelled a fenced write on {table!r} {_CONFLICT_TRIES} times ({', '.join(map(str, reasons))}); "
        "running the sync again retries it")


class HeldLease:
    """A lease held for the duration of a `with` block, renewed by a heartbeat thread.

    `check()` before a write that is not itself fenced: it raises LeaseLostError when the heartbeat
    already found the lease gone, and otherwise confirms the token with a consistent read.
    """

    def __init__(self, store: LeaseStore, user_id: str, data_type: str, owner: str, seconds: float,
                 heartbeat_seconds: float) -> None:
        self._store = store
        self._user_id, self._data_type, self._owner = user_id, data_type, owner
        self._seconds = seconds
        self._heartbeat_seconds = heartbeat_seconds
        self._stop = threading.Event()
        self._lost: LeaseLostError | None = None
        self._thread: threading.Thread | None = None
        self.fence: Fence | None = None

    def __enter__(self) -> HeldLease:
        self.fence = self._store.acquire(self._user_id, self._data_type, self._owner, self._seconds)
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self._data_type}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        if self.fence and self._lost is None:
            self._store.release(self.fence)

    def _beat(self) -> None:
        while not self._stop.wait(self._heartbeat_seconds):
            try:
                self._store.renew(self.fence, self._seconds)
            except LeaseLostError as error:
                self._lost = error
                log.warning("%s", error)
                return
            except Exception as error:  # noqa: BLE001 - any other failure: the next beat tries again
                # (a transaction conflict on the lease item, throttling, a network blip). Only a renewal that
                # finds another token ends the heartbeat; the writes' fences stay the judge either way.
                log.warning("could not renew the lease of %s %s: %s", self._user_id, self._data_type, error)

    def check(self) -> None:
        """LeaseLostError unless this lease is still ours (a consistent read of its token)."""
        if self._lost is not None:
            raise self._lost
        self._store.check(self.fence)


def _iso(epoch: Any) -> str:
    if epoch is None:
        return "?"
    return datetime.fromtimestamp(float(epoch), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
