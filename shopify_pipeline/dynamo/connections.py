"""Connected users (`shopify_connections`): shop, token reference, last syncs, high-water marks."""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from shopify_pipeline.dynamo.client import ConditionFailedError, translate_errors
from shopify_pipeline.dynamo.codec import deserialize, serialize
from shopify_pipeline.dynamo.state import now_iso
from shopify_pipeline.errors import PermanentError
from shopify_pipeline.settings import Settings

_USER_ID = re.compile(r"^[A-Za-z0-9_.@:-]{1,128}$")
logger = logging.getLogger(__name__)


class InvalidUserIdError(PermanentError):
    """A user id we cannot use as a key and a Dagster partition."""


class UnknownUserError(PermanentError):
    """No connection for this user."""


def check_user_id(user_id: str) -> str:
    """`user_id`, or InvalidUserIdError: letters, digits and `_ . @ : -` only (no `|`, `,`, spaces)."""
    if not isinstance(user_id, str) or not _USER_ID.match(user_id):
        raise InvalidUserIdError(
            f"user id {user_id!r} is not usable: use 1-128 letters, digits or _ . @ : - "
            "(no spaces, commas or |, which Dagster partition keys cannot hold)"
        )
    return user_id


class InvalidTaskSizeError(PermanentError):
    """A run task size AWS Fargate does not offer."""


# AWS Fargate's task sizes: CPU units, and the memory (MiB) each of them can have.
FARGATE_MEMORY: dict[int, tuple[int, ...]] = {
    256: (512, 1024, 2048),
    512: tuple(range(1024, 4097, 1024)),
    1024: tuple(range(2048, 8193, 1024)),
    2048: tuple(range(4096, 16385, 1024)),
    4096: tuple(range(8192, 30721, 1024)),
    8192: tuple(range(16384, 61441, 4096)),
    16384: tuple(range(32768, 122881, 8192)),
}


def check_task_size(cpu: int, memory: int) -> dict[str, str]:
    """`{"cpu": .., "memory": ..}` as ECS run tags want them (strings), or InvalidTaskSizeError naming the sizes
    Fargate offers."""
    allowed = FARGATE_MEMORY.get(cpu, ())
    if memory not in allowed:
        if not allowed:
            offered = f"CPU units are one of {', '.join(map(str, FARGATE_MEMORY))}"
        elif len(allowed) <= 3:
            offered = f"{cpu} CPU units take {', '.join(map(str, allowed))} MiB"
        else:
            offered = f"{cpu} CPU units take {allowed[0]}-{allowed[-1]} MiB in steps of {allowed[1] - allowed[0]}"
        raise InvalidTaskSizeError(f"Fargate has no task of {cpu} CPU units and {memory} MiB: {offered} "
                                   f"(e.g. --cpu 1024 --memory 4096)")
    return {"cpu": str(cpu), "memory": str(memory)}


@dataclass
class Connection:
    """A user's connected shop. `token_ref` says where the token is (env:VAR, secretsmanager:ID, literal:…)."""

    user_id: str
    shop: str
    token_ref: str
    created_at: str | None = None
    last_sync: dict[str, str] = field(default_factory=dict)  # sync type -> finished at
    high_water: dict[str, str] = field(default_factory=dict)  # data type -> updated_at high-water mark
    last_failed_run: dict | None = None  # the orchestrator's last failed run of this user (sensors.py)
    # The API new syncs read through: graphql (the default of `users add`) or rest. A connection stored
    # before there was a choice has none, and kept REST, the only API then.
    api: str = "rest"
    shapes: dict[str, str] = field(default_factory=dict)  # data type -> shape of its stored documents
    # How the shop's token works: "static" (token_ref is the token), or "expiring" (token_ref is the
    # secretsmanager: secret holding the current token pair, client_ref where the app's client id and
    # secret are; shopify/auth.py refreshes the pair).
    auth: str = "static"
    client_ref: str | None = None
    disconnected_at: str | None = None  # when the merchant uninstalled the app (a webhook said so)
    connected_at: str | None = None  # when `users add` last wrote it (an older uninstall does not apply)
    # The ECS task size of this user's scheduled and sensor-launched runs ({"cpu", "memory"}, strings);
    # empty: dagster.yaml's run_resources. Set by `users task-size`, kept by `users add`.
    task_size: dict[str, str] = field(default_factory=dict)

    def stored_shape(self, data_type: str) -> str | None:
        """The shape (graphql or rest) of this user's `data_type` documents in DynamoDB, as written by the
        last finished sync; None before the first. Connections older than the choice hold REST documents."""
        if data_type in self.shapes:
            return self.shapes[data_type]
        return "rest" if self.high_water.get(data_type) else None

    def public(self) -> dict:
        """This connection as fields safe to print or log: a `literal:` token shows as `literal:***`."""
        return {**asdict(self), "token_ref": public_token_ref(self.token_ref),
                "client_ref": public_token_ref(self.client_ref) if self.client_ref else None}

    def __repr__(self) -> str:  # the dataclass repr would print a literal token into logs and tracebacks
        fields = ", ".join(f"{name}={value!r}" for name, value in self.public().items())
        return f"Connection({fields})"


def public_token_ref(token_ref: str) -> str:
    """`token_ref` as it may be shown: env: and secretsmanager: references as they are, `literal:***` for
    a literal token, `***` for anything else (stored before references were checked: maybe a token)."""
    scheme = token_ref.partition(":")[0]
    if scheme in ("env", "secretsmanager"):
        return token_ref
    return "literal:***" if scheme == "literal" else "***"


class ConnectionStore:
    def __init__(self, client, settings: Settings) -> None:
        self._client = client
        self._table = settings.tables.connections

    def _call(self, operation: str, **kwargs) -> dict:
        with translate_errors(self._table, self._client.meta.endpoint_url):
            return getattr(self._client, operation)(TableName=self._table, **kwargs)

    def add(self, user_id: str, shop: str, token_ref: str, api: str = "graphql", auth: str = "static",
            client_ref: str | None = None, task_size: dict[str, str] | None = None) -> Connection:
        """Create a user's connection, or update its shop, token reference, API and auth. Last syncs,
        high-water marks and the shapes of stored documents are kept when the shop stays the same (a new token
        must not turn daily syncs into full ones) and reset when the shop changes; the task size is kept
        unless `task_size` (from `check_task_size`) replaces it. The write is conditional on what it keeps
        being unchanged since it was read (a sync finishing, `users task-size` meanwhile): on a change it
        reads again and retries, so nothing written in between is lost."""
        check_user_id(user_id)
        for _ in range(ADD_ATTEMPTS):
            old = self._call("get_item", Key={"userId": {"S": user_id}}, ConsistentRead=True).get("Item")
            item = self._new_item(old, user_id, shop, token_ref, api, auth, client_ref, task_size)
            try:
                self._call("put_item", Item=item, **_unchanged(old))
            except ConditionFailedError:
                continue
            return _connection(item)
        raise ConditionFailedError(f"the connection of user {user_id!r} kept changing while it was written "
                                   f"({ADD_ATTEMPTS} attempts): try `users add` again")

    @staticmethod
    def _new_item(old: dict | None, user_id: str, shop: str, token_ref: str, api: str, auth: str,
                  client_ref: str | None, task_size: dict[str, str] | None) -> dict:
        same_shop = old is not None and old["shop"]["S"] == shop
        item = {
            "userId": {"S": user_id}, "shop": {"S": shop}, "tokenRef": {"S": token_ref},
            "createdAt": old["createdAt"] if same_shop else {"S": now_iso()},
            "lastSync": old.get("lastSync", {"M": {}}) if same_shop else {"M": {}},
            "highWater": old.get("highWater", {"M": {}}) if same_shop else {"M": {}},
            "api": {"S": api}, "auth": {"S": auth}, "connectedAt": {"S": now_iso()},
        }
        if client_ref:
            item["clientRef"] = {"S": client_ref}
        if same_shop and "shapes" in old:
            item["shapes"] = old["shapes"]
        if task_size:
            item["taskSize"] = serialize(task_size)
        elif old is not None and "taskSize" in old:  # the operator's choice, whatever the token or shop
            item["taskSize"] = old["taskSize"]
        return item

    def get(self, user_id: str) -> Connection:
        item = self._call("get_item", Key={"userId": {"S": user_id}}, ConsistentRead=True).get("Item")
        if not item:
            raise UnknownUserError(
                f"no Shopify connection for user {user_id!r}: add one with "
                f"`shopify-pipeline users add --user {user_id} --shop SHOP --token-ref env:VAR`"
            )
        return _connection(item)

    def list(self) -> list[Connection]:
        connections, kwargs = [], {"ConsistentRead": True}
        while True:
            page = self._call("scan", **kwargs)
            connections.extend(_connection(item) for item in page["Items"])
            if "LastEvaluatedKey" not in page:
                return sorted(connections, key=lambda c: c.user_id)
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def mark_disconnected(self, user_id: str, at: str, before: str | None = None) -> bool:
        """The merchant uninstalled the app (`app/uninstalled`, triggered at `before`): scheduled syncs skip the
        user until it is connected again (`users add`, which writes the connection anew). Its data is kept.
        Returns False, changing nothing, when the connection was made after `before` (a late delivery of an
        earlier uninstall) or is gone."""
        current = self.get(user_id)
        if before and current.connected_at and _moment(current.connected_at) > _moment(before):
            return False
        condition = "attribute_exists(userId) AND " + (
            "connectedAt = :c" if current.connected_at else "attribute_not_exists(connectedAt)")
        values = {":at": {"S": at}, **({":c": {"S": current.connected_at}} if current.connected_at else {})}
        try:
            self._call("update_item", Key={"userId": {"S": user_id}}, UpdateExpression="SET disconnectedAt = :at",
                       ConditionExpression=condition, ExpressionAttributeValues=values)
        except ConditionFailedError:
            return False  # connected again (or removed) meanwhile
        return True

    def clear_disconnected(self, user_id: str, seen: str) -> bool:
        """The app is installed again (Shopify accepts the token): scheduled syncs take the user again. Only if
        `disconnectedAt` is still `seen`. Returns whether it changed."""
        try:
            self._call("update_item", Key={"userId": {"S": user_id}}, UpdateExpression="REMOVE disconnectedAt",
                       ConditionExpression="disconnectedAt = :seen", ExpressionAttributeValues={":seen": {"S": seen}})
        except ConditionFailedError:
            return False
        return True

    def set_task_size(self, user_id: str, cpu: int | None, memory: int | None) -> Connection:
        """Give the user's scheduled and sensor-launched runs an ECS task of `cpu` units and `memory` MiB (a
        size Fargate offers, else InvalidTaskSizeError), or, both None, dagster.yaml's default again.
        UnknownUserError when there is no connection."""
        if cpu is None and memory is None:
            update, values = "REMOVE taskSize", {}
        else:
            if cpu is None or memory is None:
                raise InvalidTaskSizeError("a task size needs both --cpu and --memory (e.g. --cpu 1024 --memory 4096)")
            update, values = "SET taskSize = :size", {":size": serialize(check_task_size(cpu, memory))}
        try:
            item = self._call("update_item", Key={"userId": {"S": user_id}}, UpdateExpression=update,
                              ConditionExpression="attribute_exists(userId)", ReturnValues="ALL_NEW",
                              **({"ExpressionAttributeValues": values} if values else {}))["Attributes"]
        except ConditionFailedError:
            self.get(user_id)  # raises UnknownUserError with what to do
            raise
        return _connection(item)

    def remove(self, user_id: str) -> bool:
        old = self._call("delete_item", Key={"userId": {"S": user_id}}, ReturnValues="ALL_OLD")
        return "Attributes" in old

    def record_finished(self, user_id: str, sync_type: str, data_type: str, high_water: str | None,
                        shape: str | None = None) -> None:
        """After a sync finished with nothing failed: its time, the data type's new high-water mark, and, after
        a full sync (which rewrote every document), the shape its documents have now."""
        expression = "SET lastSync.#s = :now"
        values = {":now": serialize(now_iso())}
        names = {"#s": f"{sync_type}_{data_type}"}

        if high_water:
            expression += ", highWater.#d = :hw"
            values[":hw"] = serialize(high_water)
            names["#d"] = data_type
        if not (shape and sync_type != "daily"):
            self._call("update_item", Key={"userId": {"S": user_id}}, UpdateExpression=expression,
                       ExpressionAttributeNames=names, ExpressionAttributeValues=values,
                       ConditionExpression="attribute_exists(userId)")
            return
        # One update with the shape, so that a crash never leaves a new high-water mark beside an old shape.
        # A connection stored before shapes existed has no map to set a key of: then the whole map is set.
        try:
            self._call("update_item", Key={"userId": {"S": user_id}},
                       UpdateExpression=expression + ", shapes.#dt = :shape",
                       ExpressionAttributeNames={**names, "#dt": data_type},
                       ExpressionAttributeValues={**values, ":shape": {"S": shape}},
                       ConditionExpression="attribute_exists(userId) AND attribute_exists(shapes)")
        except ConditionFailedError:
            self._call("update_item", Key={"userId": {"S": user_id}},
                       UpdateExpression=expression + ", shapes = :shapes", ExpressionAttributeNames=names,
                       ExpressionAttributeValues={**values, ":shapes": {"M": {data_type: {"S": shape}}}},
                       ConditionExpression="attribute_exists(userId) AND attribute_not_exists(shapes)")

    def record_run_failure(self, user_id: str, failure: dict) -> None:
        """Keep the last failed orchestrator run of a user (run id, job, failed steps and their messages)."""
        self._call("update_item", Key={"userId": {"S": user_id}}, UpdateExpression="SET lastFailedRun = :f",
                   ExpressionAttributeValues={":f": serialize({**failure, "at": now_iso()})},
                   ConditionExpression="attribute_exists(userId)")


ADD_ATTEMPTS = 5
_KEPT_BY_ADD = ("shop", "createdAt", "lastSync", "highWater", "shapes", "taskSize")


def _unchanged(old: dict | None) -> dict:
    """put_item's condition that the item is still `old` in what `add` keeps from it (absent: still absent)."""
    if old is None:
        return {"ConditionExpression": "attribute_not_exists(userId)"}
    terms, names, values = [], {}, {}
    for i, name in enumerate(_KEPT_BY_ADD):
        names[f"#k{i}"] = name
        if name in old:
            terms.append(f"#k{i} = :k{i}")
            values[f":k{i}"] = old[name]
        else:
            terms.append(f"attribute_not_exists(#k{i})")
    return {"ConditionExpression": " AND ".join(terms), "ExpressionAttributeNames": names,
            **({"ExpressionAttributeValues": values} if values else {})}


def _moment(text: str) -> datetime:
    """An ISO timestamp (with or without fractions, Z or an offset) as an aware datetime; unreadable: the epoch."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return datetime.fromtimestamp(0, timezone.utc)
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _connection(item: dict) -> Connection:
    data = {k: deserialize(v) for k, v in item.items()}
    return Connection(data["userId"], data["shop"], data["tokenRef"], data.get("createdAt"),
                      data.get("lastSync", {}), data.get("highWater", {}), data.get("lastFailedRun"),
                      data.get("api", "rest"), data.get("shapes", {}), data.get("auth", "static"),
                      data.get("clientRef"), data.get("disconnectedAt"), data.get("connectedAt"),
                      _stored_task_size(data["userId"], data.get("taskSize")))


def _stored_task_size(user_id: str, stored: object) -> dict[str, str]:
    """A stored task size as `check_task_size` returns it; one that is not a size Fargate offers (written by
    hand, or by a later release) is ignored with a warning, so one bad row never stops the schedule, the sensor
    or `users list` for every user: that user's runs get dagster.yaml's run_resources."""
    if stored is None:
        return {}
    try:
        return check_task_size(int(stored["cpu"]), int(stored["memory"]))
    except (InvalidTaskSizeError, KeyError, TypeError, ValueError, ArithmeticError) as error:
        logger.warning("user %s: ignoring its stored task size %.200r (%s): its runs get dagster.yaml's "
                       "run_resources; set it again with `shopify-pipeline users task-size`", user_id, stored, error)
        return {}
