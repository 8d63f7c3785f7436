"""The seed's service API in Python: syncs per user, status, checkpoints, failed batches, connections.

    service = SyncService.from_env()
    service.add_connection("user-1", "acme.myshopify.com", "env:ACME_TOKEN")
    result = service.initial_sync("user-1")
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from shopify_pipeline.dynamo.connections import Connection, UnknownUserError, check_user_id
from shopify_pipeline.dynamo.state import CheckpointError, LeaseHeldError
from shopify_pipeline.errors import PermanentError, PipelineError, TransientError
from shopify_pipeline.settings import AUTO, DATA_TYPES, SYNC_TYPES, Settings, ShopifySettings
from shopify_pipeline.sync.engine import FetchResult, Progress, RetryResult, SyncEngine, SyncOptions
from shopify_pipeline.sync.tokens import check_token_ref

log = logging.getLogger(__name__)


class ShopChangeRefusedError(PermanentError):
    """`users add` for a connected user names another shop, without --replace."""

# A sync that has not ended; "fetched" is the pause between the fetch and load steps, which holds no lease.
IN_PROGRESS = ("fetching", "fetched", "loading")


@dataclass
class DataTypeResult:
    """One data type's sync. After an error, records and pages are those fetched so far (kept in the
    checkpoint for the next run)."""

    sync_type: str = ""  # the one that ran (what `auto` chose)
    records: int = 0
    pages: int = 0
    pages_fetched_this_run: int = 0
    failed_pages: list[dict] = field(default_factory=list)
    failed_batches: list[dict] = field(default_factory=list)
    requests: int = 0
    retries: int = 0
    throttled: int = 0
    deleted: int = 0
    error: str | None = None


@dataclass
class SyncResult:
    """The outcome of one user's sync: success means every data type finished with nothing failed."""

    user_id: str
    sync_type: str
    success: bool
    data_types: dict[str, DataTypeResult]

    @property
    def records(self) -> dict[str, int]:
        return {name: result.records for name, result in self.data_types.items()}


class SyncService:
    def __init__(self, engine: SyncEngine) -> None:
        self.engine = engine

    @classmethod
    def from_env(cls, options: SyncOptions | None = None) -> SyncService:
        return cls(SyncEngine(Settings.from_env(), ShopifySettings.from_env(), options or SyncOptions.from_env()))

    # Syncs ---------------------------------------------------------------------------------------

    def initial_sync(self, user_id: str, data_types=DATA_TYPES, progress: Progress | None = None) -> SyncResult:
        return self.sync(user_id, "initial", data_types, progress)

    def manual_sync(self, user_id: str, data_types=DATA_TYPES, progress: Progress | None = None) -> SyncResult:
        return self.sync(user_id, "manual", data_types, progress)

    def daily_sync(self, user_id: str, data_types=DATA_TYPES, progress: Progress | None = None) -> SyncResult:
        return self.sync(user_id, "daily", data_types, progress)

    def sync(self, user_id: str, sync_type: str = AUTO, data_types=DATA_TYPES,
             progress: Progress | None = None) -> SyncResult:
        """Fetch then load each data type. A permanent error (bad token …) stops the user's sync; a
        transient one is recorded for that data type and the others go on.

        `auto` (the default) resumes each data type's unfinished sync, else runs daily if it was synced
        before, else initial."""
        check_user_id(user_id)
        results: dict[str, DataTypeResult] = {}
        success = True
        for data_type in data_types:
            outcome = results[data_type] = DataTypeResult()
            fetched = None
            try:
                fetched = self.engine.fetch(user_id, sync_type, data_type, progress)
                outcome.sync_type = fetched.sync_type
                loaded = self.engine.load(user_id, fetched.sync_type, data_type, progress)
            except PermanentError as error:
                outcome.error = str(error)
                success = False
                self._count_fetched_so_far(outcome, fetched, user_id, sync_type, data_type)
                if getattr(error, "reason", None):  # a Shopify or token error: every data type would fail alike
                    break
                continue
            except TransientError as error:
                outcome.error = str(error)
                success = False
                self._count_fetched_so_far(outcome, fetched, user_id, sync_type, data_type)
                continue
            outcome.records, outcome.pages = fetched.records, fetched.pages
            outcome.pages_fetched_this_run = fetched.pages_this_run
            outcome.failed_pages, outcome.failed_batches = fetched.failed_pages, loaded.failed_batches
            outcome.requests, outcome.retries, outcome.throttled = fetched.requests, fetched.retries, fetched.throttled
            outcome.deleted = loaded.deleted
            success = success and loaded.finished
        return SyncResult(user_id, sync_type, success, results)

    def _count_fetched_so_far(self, outcome: DataTypeResult, fetched: FetchResult | None, user_id: str,
                              sync_type: str, data_type: str) -> None:
        """After an error: the pages and records fetched so far, from the fetch or else its checkpoint
        (a fetch that raised returns nothing, yet its checkpoint holds every page it staged)."""
        if fetched is not None:
            outcome.records, outcome.pages = fetched.records, fetched.pages
            return
        try:
            sync_type = self.engine.resolve_sync_type(user_id, data_type, sync_type)
            outcome.sync_type = outcome.sync_type or sync_type
            checkpoint = self.engine.state.load_checkpoint(user_id, sync_type, data_type)
        except PipelineError as error:  # the summary must not hide the error that stopped the sync
            log.warning("cannot count what %s %s %s fetched so far: %s", user_id, sync_type, data_type, error)
            return
        if checkpoint is not None:
            outcome.records = int(checkpoint.state.get("records", 0))
            outcome.pages = int(checkpoint.state.get("pages", 0))

    def retry_failed_batches(self, user_id: str, sync_type: str | None, data_type: str) -> RetryResult:
        """The seed's manual retry: (success, retried, still failed). When nothing is left failed and the
        sync's fetch was complete, the sync is finished too (status completed, checkpoint cleared).

        `sync_type` None (or `auto`): every sync type of this data type that has failed batches."""
        check_user_id(user_id)
        if sync_type in (None, AUTO):
            saved = [st for st in SYNC_TYPES if self.engine.state.failed_batches(user_id, st, data_type)]
            results = [self.retry_failed_batches(user_id, st, data_type) for st in saved]
            retried, still = sum(r.retried for r in results), sum(r.still_failed for r in results)
            return RetryResult(still == 0, retried, still)
        result = self.engine.retry_failed_batches(user_id, sync_type, data_type)
        if result.success and result.retried and self.engine.state.has_checkpoint(user_id, sync_type, data_type):
            self.engine.load(user_id, sync_type, data_type)
        return result

    # Status and checkpoints ----------------------------------------------------------------------

    def get_sync_status(self, user_id: str) -> dict:
        """The user's status: overall, and per data type (status, stage, counts, page, message, updatedAt).

        A status in progress (fetching, fetched, loading) is reported as `stuck` when no live lease is held
        for its data type and its last update is older than the lease."""
        check_user_id(user_id)
        per_type = self.engine.state.get_status(user_id)
        for data_type, status in per_type.items():
            status["stuck"] = status["status"] in IN_PROGRESS and self._is_stuck(user_id, data_type, status)
        statuses = {s["status"] for s in per_type.values()}
        if not per_type:
            overall = "never_synced"
        elif "failed" in statuses:
            overall = "failed"
        elif statuses & set(IN_PROGRESS):
            overall = "running"
        else:
            overall = "completed"
        answer = {"userId": user_id, "status": overall, "dataTypes": per_type}
        try:
            failed_run = self.engine.connections.get(user_id).last_failed_run
        except UnknownUserError:
            failed_run = None
        if failed_run:
            answer["lastFailedRun"] = failed_run
        return answer

    def _is_stuck(self, user_id: str, data_type: str, status: dict) -> bool:
        lease = self.engine.state.lease(user_id, data_type)
        if lease is not None and float(lease["expiresAt"]) > time.time():
            return False  # a live lease: its sync is running, however slowly
        updated = datetime.fromisoformat(status["updatedAt"].replace("Z", "+00:00"))
        # The grace covers the gap between the fetch and load steps (Dagster starts a new process).
        return (datetime.now(timezone.utc) - updated).total_seconds() > self.engine.settings.lease_seconds

    def clear_sync_status(self, user_id: str, data_type: str | None = None, release_lease: bool = False) -> int:
        """Delete a (stuck) status; with release_lease, also break the leases a dead sync left behind.
        Returns how many status items were deleted."""
        check_user_id(user_id)
        if release_lease:
            for name in [data_type] if data_type else DATA_TYPES:
                self.engine.state.break_lease(user_id, name)
        return self.engine.state.clear_status(user_id, data_type)

    def load_checkpoint(self, user_id: str, sync_type: str) -> dict[str, dict]:
        """{data type: checkpoint state and version} for every data type with a checkpoint."""
        check_user_id(user_id)
        _check_sync_type(sync_type)
        out = {}
        for data_type in DATA_TYPES:
            checkpoint = self.engine.state.load_checkpoint(user_id, sync_type, data_type)
            if checkpoint:
                out[data_type] = {"version": checkpoint.version, "updatedAt": checkpoint.updated_at,
                                  **checkpoint.state}
        return out

    def clear_checkpoint(self, user_id: str, sync_type: str, data_type: str | None = None) -> list[str]:
        """Forget where a sync stood, with its staged pages; the next run starts over. Works on a
        corrupt checkpoint too. Returns the data types cleared."""
        check_user_id(user_id)
        _check_sync_type(sync_type)
        cleared = []
        for name in [data_type] if data_type else DATA_TYPES:
            if self.engine.state.has_checkpoint(user_id, sync_type, name):
                if self.engine.state.leases.is_live(user_id, name):
                    raise LeaseHeldError(
                        f"a sync of {name} for user {user_id} is running (it holds the lease): clearing its "
                        "checkpoint now would pull its staged pages from under it. Wait for it to end, or stop it "
                        f"and break its lease with `shopify-pipeline clear --user {user_id} --release-lease` first.")
                try:
                    key = self.engine.staging_key(user_id, sync_type, name)
                except CheckpointError:
                    key = None  # unreadable: its pages are never read again and expire with their TTL
                self.engine.state.clear_checkpoint(user_id, sync_type, name)
                if key:
                    self.engine.pages.drop(key)
                cleared.append(name)
        return cleared

    # Connections ---------------------------------------------------------------------------------

    def add_connection(self, user_id: str, shop: str, token_ref: str, replace: bool = False,
                       api: str | None = None, auth: str = "static", client_ref: str | None = None,
                       dry_run: bool = False, task_size: dict[str, str] | None = None) -> Connection | None:
        """Connect (or reconnect) a user's shop. Refuses a bad user id, shop domain or token reference
        (TokenReferenceError, e.g. a token pasted where `env:VAR` belongs) before anything is stored, and
        a different shop for a connected user unless `replace` (ShopChangeRefusedError says what happens).

        `api` is the API syncs read through: graphql (the default for a new connection) or rest; a reconnect
        without it keeps the connection's API. See `api_change_notice` for what a change means. `task_size`
        (from `check_task_size`) sets the ECS task of the user's scheduled and sensor-launched runs; without
        it the connection keeps the one it has."""
        from shopify_pipeline.shopify.client import shop_base_url
        from shopify_pipeline.shopify.sources import APIS, DEFAULT_API

        if api is not None and api not in APIS:
            from shopify_pipeline.settings import SettingsError

            raise SettingsError(f"unknown Shopify API {api!r}; expected one of {', '.join(APIS)}")

        check_user_id(user_id)
        check_token_ref(token_ref)
        new_base = shop_base_url(shop, self.engine.shopify_settings.allow_local_shops)  # refuse a bad domain now
        try:
            old = self.engine.connections.get(user_id)
        except UnknownUserError:
            old = None
        if old is not None and not replace and shop_base_url(old.shop, allow_local=True) != new_base:
            raise ShopChangeRefusedError(
                f"user {user_id} is connected to {old.shop}, not {shop}. Connecting another shop resets the "
                "user's high-water marks and last syncs (the next sync is a full initial one); the old shop's "
                "records stay in the tables under this user id, beside the new shop's. Run `users add` again with "
                "--replace to do that, or connect the new shop under a new user id to keep them apart.")
        same_shop = old is not None and shop_base_url(old.shop, allow_local=True) == new_base
        if dry_run:
            return None
        return self.engine.connections.add(user_id, shop, token_ref, api or (old.api if same_shop else DEFAULT_API),
                                           auth=auth, client_ref=client_ref, task_size=task_size)

    def connect_expiring(self, user_id: str, shop: str, client_ref: str, token_secret: str | None = None, *,
                         code: str | None = None, refresh_token_ref: str | None = None,
                         static_token_ref: str | None = None, replace: bool = False,
                         api: str | None = None, task_size: dict[str, str] | None = None) -> Connection:
        """Connect a shop with expiring tokens (public apps, required from 2027-01-01). Exactly one source of
        the first pair: `code`, the authorization code of the app's OAuth redirect; `refresh_token_ref`, a
        reference to a refresh token the app already holds; or `static_token_ref`, the shop's non-expiring
        token, exchanged for an expiring pair (the migration path). The pair is stored in the Secrets Manager
        secret `token_secret` (default `shopify-pipeline/<user>/tokens`) before the connection names it."""
        from shopify_pipeline.settings import SettingsError
        from shopify_pipeline.shopify.auth import OAuthClient
        from shopify_pipeline.shopify.client import shop_base_url
        from shopify_pipeline.sync.tokens import (
            SecretsManagerVault,
            resolve_client_credentials,
            resolve_token,
            token_secret_id,
        )

        sources = [name for name, value in (("code", code), ("refresh_token_ref", refresh_token_ref),
                                            ("static_token_ref", static_token_ref)) if value]
        if len(sources) != 1:
            raise SettingsError("an expiring connection needs exactly one of: --code (the authorization code of the "
                                "app's OAuth redirect), --refresh-token-ref, or --migrate-token-ref (a static "
                                "token to exchange)")
        check_user_id(user_id)
        token_ref = f"secretsmanager:{token_secret or f'shopify-pipeline/{user_id}/tokens'}"
        check_token_ref(token_ref)
        check_token_ref(client_ref)
        # Everything is checked before Shopify is asked (a code is single use): the connection (shop, replace),
        # that no other connection refreshes this shop's tokens from another secret (each refresh would revoke
        # the other's), the app's credentials, and that the secret can be written.
        self.add_connection(user_id, shop, token_ref, replace=replace, api=api, dry_run=True)
        engine = self.engine
        new_base = shop_base_url(shop, engine.shopify_settings.allow_local_shops)
        for other in self.list_connections():
            if (other.user_id != user_id and other.auth == "expiring" and other.token_ref != token_ref
                    and shop_base_url(other.shop, allow_local=True) == new_base):
                raise SettingsError(
                    f"{other.user_id} already keeps this shop's expiring tokens in {other.token_ref}: Shopify keeps "
                    "one token per app and shop, so two pairs would revoke each other. Connect with --token-secret "
                    f"{other.token_ref.removeprefix('secretsmanager:')} to share it.")
        credentials = resolve_client_credentials(client_ref, engine.secrets)
        vault = SecretsManagerVault(engine.secrets, token_secret_id(token_ref))
        vault.ensure_writable()
        oauth = OAuthClient(shop_base_url(shop, engine.shopify_settings.allow_local_shops), credentials,
                            engine.shopify_settings)
        try:
            if code:
                pair = oauth.exchange_code(code)
            elif refresh_token_ref:
                pair = oauth.refresh(resolve_token(refresh_token_ref, engine.secrets))
            else:
                pair = oauth.exchange_static_token(resolve_token(static_token_ref or "", engine.secrets))
        finally:
            oauth.close()
        vault.save(pair)  # stored before the connection names it
        return self.add_connection(user_id, shop, token_ref, replace=replace, api=api, auth="expiring",
                                   client_ref=client_ref, task_size=task_size)

    @staticmethod
    def api_change_notice(connection: Connection) -> str | None:
        """What to do when a connection's API differs from the shape of documents already stored, else None."""
        stale = [f"{d} ({connection.stored_shape(d).upper()})" for d in DATA_TYPES
                 if connection.stored_shape(d) not in (None, connection.api)]
        if not stale:
            return None
        return (f"{connection.user_id} now syncs through {connection.api.upper()}, but its stored documents of "
                f"{', '.join(stale)} have the other API's shape (and fields: docs/configuration.md#choosing-the-api)."
                f" Run a manual full sync to rewrite them: `shopify-pipeline sync --user {connection.user_id} --type "
                "manual` (auto chooses it too). Until then, daily syncs of them are refused rather than mixing the "
                "two shapes.")

    def list_connections(self) -> list[Connection]:
        """Every connection; print them with `Connection.public()`, which hides literal tokens."""
        return self.engine.connections.list()

    def remove_connection(self, user_id: str) -> bool:
        check_user_id(user_id)
        return self.engine.connections.remove(user_id)

    def find_failed_batches(self, data_type: str, user_id: str | None = None) -> list[dict]:
        """Saved failed batches of `data_type`, of every user or of `user_id` (see StateStore)."""
        if user_id is not None:
            check_user_id(user_id)
        return self.engine.state.find_failed_batches(data_type, user_id)


def _check_sync_type(sync_type: str) -> None:
    if sync_type not in SYNC_TYPES:
        from shopify_pipeline.settings import SettingsError

        raise SettingsError(f"unknown sync type {sync_type!r}; expected one of {', '.join(SYNC_TYPES)}")
