"""`shopify-pipeline …`: the command line for operators. Each subcommand is a thin call into a layer."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from pathlib import Path

from shopify_pipeline.logs import forward_logs
from shopify_pipeline.settings import AUTO, DATA_TYPES, SYNC_TYPE_CHOICES, SYNC_TYPES, Settings


def _data_types(value: str) -> tuple[str, ...]:
    """`--data-types orders,products`: a usage error (exit 2) for anything else, before anything runs."""
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    unknown = [name for name in names if name not in DATA_TYPES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown data type(s) {', '.join(map(repr, unknown)) or '(none given)'}: use a comma-separated "
            f"subset of {','.join(DATA_TYPES)}")
    return names


def _local_dynamodb(args: argparse.Namespace) -> int:
    from shopify_pipeline.dynamo.local import LocalDynamoDB, ensure_jar

    if args.fetch_only:
        print(ensure_jar())
        return 0
    server = LocalDynamoDB(port=args.port, data_dir=Path(args.data_dir) if args.data_dir else None)
    server.start()
    storage = f"data in {args.data_dir}" if args.data_dir else "in memory"
    print(f"DynamoDB Local is running at {server.endpoint_url} ({storage}). Ctrl-C stops it.")
    print(f"  export AWS_ENDPOINT_URL_DYNAMODB={server.endpoint_url}", flush=True)
    try:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        server._process.wait()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.stop()
        print("DynamoDB Local stopped.")
    return 0


def _create_tables(args: argparse.Namespace) -> int:
    from shopify_pipeline.dynamo.client import dynamodb_client
    from shopify_pipeline.dynamo.tables import create_tables

    settings = Settings.from_env()
    created = create_tables(dynamodb_client(settings), settings.tables)
    if args.json:
        print(json.dumps(created))
    else:
        for name, what in created.items():
            print(f"{name}: {what}")
    return 0


def _simulator(args: argparse.Namespace) -> int:
    from shopify_pipeline.simulator.cli import run

    return run(args)


def _service():
    from shopify_pipeline.sync.service import SyncService

    return SyncService.from_env()


def _print(args: argparse.Namespace, data, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


def _print_added(args: argparse.Namespace, service, connection) -> None:
    notice = service.api_change_notice(connection)
    _print(args, {**connection.public(), "notice": notice},
           f"added {connection.user_id} → {connection.shop} ({connection.api.upper()}, {connection.auth} token"
           + (f", task {connection.task_size['cpu']} CPU / {connection.task_size['memory']} MiB"
              if connection.task_size else "") + ")"
           + (f"\n{notice}" if notice else ""))


def _webhooks(args: argparse.Namespace) -> int:
    from shopify_pipeline.sync.tokens import resolve_token
    from shopify_pipeline.webhooks.handler import WebhookHandler
    from shopify_pipeline.webhooks.server import WebhookServer

    engine = _service().engine
    if args.action == "subscribe":
        from shopify_pipeline.webhooks.subscriptions import subscribe

        if not (args.user and args.address):
            raise SystemExit("webhooks subscribe needs --user and --address")
        from shopify_pipeline.shopify.graphql import GraphQLClient

        client = engine.shopify_client(engine.connections.get(args.user))  # GraphQL, whatever the sync API
        try:
            outcome = subscribe(GraphQLClient(client), args.address)
        finally:
            client.close()
        _print(args, outcome, f"subscribed {args.user}: {len(outcome['created'])} created, "
                              f"{len(outcome['existing'])} already there")
        return 0
    if args.action in ("inbox", "replay"):
        from shopify_pipeline.webhooks.inbox import FAILED, PENDING, WebhookInbox

        inbox = WebhookInbox(engine.dynamodb, engine.settings.tables.webhook_inbox)
        replayed = inbox.replay() if args.action == "replay" else 0
        items = inbox.items()
        counts = {status: sum(1 for i in items if i.status == status) for status in (PENDING, FAILED)}
        failed = [{"topic": i.event["topic"], "user": i.event["user"], "id": i.event.get("id"),
                   "attempts": i.attempts, "error": i.last_error} for i in items if i.status == FAILED]
        _print(args, {**counts, "replayed": replayed, "failed_events": failed[:100]},
               (f"replayed {replayed} failed event(s); " if args.action == "replay" else "")
               + f"webhook inbox: {counts[PENDING]} pending, {counts[FAILED]} failed"
               + "".join(f"\n  failed: {f['topic']} {f['user']} id {f['id']} after {f['attempts']} attempts "
                         f"({f['error']})" for f in failed[:20]))
        return 0
    if not args.secret_ref:
        raise SystemExit("webhooks serve needs --secret-ref (where the app's client secret is)")
    server = WebhookServer(WebhookHandler(engine, resolve_token(args.secret_ref, engine.secrets)), port=args.port)
    print(f"serving Shopify webhooks at {server.url} (Ctrl-C to stop)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


def _task_size_option(args: argparse.Namespace) -> dict[str, str] | None:
    """`--cpu` with `--memory` as a checked task size (InvalidTaskSizeError for one Fargate does not offer),
    None when neither is given; refused where the action takes none."""
    from shopify_pipeline.dynamo.connections import check_task_size

    given = args.cpu is not None or args.memory is not None
    if (given or args.clear) and args.action not in ("add", "task-size"):
        raise SystemExit(f"users {args.action} takes no --cpu, --memory or --clear (see users task-size)")
    if args.clear and given:
        raise SystemExit("users task-size: --clear or --cpu with --memory, not both")
    if not given:
        return None
    if args.cpu is None or args.memory is None:
        raise SystemExit(f"users {args.action} needs --cpu with --memory (a Fargate size, e.g. --cpu 1024 "
                         "--memory 4096)")
    return check_task_size(args.cpu, args.memory)


def _users(args: argparse.Namespace) -> int:
    task_size = _task_size_option(args)  # checked before anything is asked or stored
    service = _service()
    if args.action == "add" and args.auth == "expiring":
        if args.user is None or not (args.shop and args.client_ref):
            raise SystemExit("users add --auth expiring needs --user, --shop, --client-ref (where the app's client id "
                             "and secret are) and one of --code, --refresh-token-ref or --migrate-token-ref")
        connection = service.connect_expiring(
            args.user, args.shop, args.client_ref, args.token_secret, code=args.code,
            refresh_token_ref=args.refresh_token_ref, static_token_ref=args.migrate_token_ref,
            replace=args.replace, api=args.api, task_size=task_size)
        _print_added(args, service, connection)
    elif args.action == "add":
        if args.user is None or not (args.shop and args.token_ref):
            raise SystemExit("users add needs --user, --shop and --token-ref (env:VAR, secretsmanager:ID or "
                             "literal:TOKEN), or --auth expiring (see --help)")
        connection = service.add_connection(args.user, args.shop, args.token_ref, replace=args.replace, api=args.api,
                                            task_size=task_size)
        _print_added(args, service, connection)
    elif args.action == "remove":
        if args.user is None:
            raise SystemExit("users remove needs --user")
        removed = service.remove_connection(args.user)
        _print(args, {"removed": removed}, f"removed {args.user}" if removed else f"no connection for {args.user}")
    elif args.action == "task-size":
        if args.user is None or not (args.clear or task_size):
            raise SystemExit("users task-size needs --user and --cpu with --memory (a Fargate size, e.g. --cpu 1024 "
                             "--memory 4096), or --clear for dagster.yaml's run_resources")
        connection = service.engine.connections.set_task_size(
            args.user, *((None, None) if args.clear else (args.cpu, args.memory)))
        size = connection.task_size
        _print(args, connection.public(), f"{args.user}: scheduled and sensor-launched runs get " + (
            f"{size['cpu']} CPU units and {size['memory']} MiB" if size else "dagster.yaml's run_resources"))
    elif args.action == "purge-uninstalled":
        from shopify_pipeline.webhooks.compliance import Compliance, uninstalled_retention_days

        days = args.days if args.days is not None else uninstalled_retention_days()
        if days is None:
            _print(args, {}, "SHOPIFY_UNINSTALLED_RETENTION_DAYS=none: uninstalled shops are kept until shop/redact")
            return 0
        if days < 0:
            raise SystemExit("users purge-uninstalled --days must be 0 or more")
        outcome = Compliance(service.engine).purge_uninstalled(days)
        _print(args, outcome, "\n".join(f"{user}: " + ("erased" if "erased" in done else next(iter(done.values())))
                                        for user, done in outcome.items())
               or f"no shop uninstalled {days} or more days ago")
        return 1 if any("failed" in done for done in outcome.values()) else 0
    else:
        connections = service.list_connections()
        rows = [f"{c.user_id:24} {c.shop:40} {c.api:8} "
                + (f"task {c.task_size['cpu']}/{c.task_size['memory']} " if c.task_size else "")
                + f"last syncs: {c.last_sync or '-'}" for c in connections]
        _print(args, [c.public() for c in connections], "\n".join(rows) or "no users connected")
    return 0


def _sync(args: argparse.Namespace) -> int:
    from shopify_pipeline.cli_progress import ProgressLine

    service = _service()
    with ProgressLine(enabled=not args.json) as line, forward_logs(lambda _level, message: line.update(message)):
        result = service.sync(args.user, args.type, args.data_types, progress=line.update)
    summary = {name: r.__dict__ for name, r in result.data_types.items()}
    text = [f"{args.type} sync of {args.user}: {'succeeded' if result.success else 'FAILED'}"]
    for name, r in result.data_types.items():
        name = f"{name} ({r.sync_type})" if r.sync_type and args.type == AUTO else name
        if r.error:  # the fetch stopped: what it staged is in the checkpoint, and the next run resumes from it
            text.append(f"  {name:10} {r.records:7} records  {r.pages:4} pages fetched so far, kept for the rerun"
                        f"\n    error: {r.error}")
            continue
        text.append(f"  {name:10} {r.records:7} records  {r.pages:4} pages  {r.retries} retries  "
                    f"{r.throttled} throttled waited out  {len(r.failed_pages)} failed pages  "
                    f"{len(r.failed_batches)} failed batches")
    if not result.success:
        text.append(f"  next: `shopify-pipeline status --user {args.user}` says what failed and what to run.")
    _print(args, {"success": result.success, "dataTypes": summary}, "\n".join(text))
    return 0 if result.success else 1


def _status(args: argparse.Namespace) -> int:
    status = _service().get_sync_status(args.user)
    lines = [f"{status['userId']}: {status['status']}"]
    for name, s in sorted(status["dataTypes"].items()):
        stuck = ("  (STUCK: no live lease and no progress for longer than the lease; see the runbook)"
                 if s.get("stuck") else "")
        lines.append(f"  {name:10} {s['status']:10} {s.get('syncType', '-'):8} {s.get('message', '')}  "
                     f"[updated {s['updatedAt']}]{stuck}")
        if "requests" in s:
            lines.append(f"             last run: {s['requests']} requests, {s.get('retries', 0)} retries, "
                         f"{s.get('throttled', 0)} throttled waited out")
        if s.get("failedBatchRanges"):
            lines.append(f"             failed batches: {', '.join(s['failedBatchRanges'])}")
    failed_run = status.get("lastFailedRun")
    if failed_run:
        lines.append(f"  last failed Dagster run: {failed_run['runId']} ({failed_run['job']}, {failed_run['at']}): "
                     f"{failed_run['message'][:300]}")
    _print(args, status, "\n".join(lines))
    return 0


def _checkpoint(args: argparse.Namespace) -> int:
    service = _service()
    if args.action == "clear":
        cleared = service.clear_checkpoint(args.user, args.sync_type, args.data_type)
        _print(args, {"cleared": cleared},
               f"cleared {', '.join(cleared)}" if cleared else "no checkpoint to clear")
        return 0
    checkpoints = service.load_checkpoint(args.user, args.sync_type)
    lines = [f"{args.user} {args.sync_type}: no checkpoint (nothing in progress)"] if not checkpoints else []
    for name, c in checkpoints.items():
        slices = c.get("slices", [])
        lines.append(f"{name}: version {c['version']}, {c.get('pages', 0)} pages / {c.get('records', 0)} records "
                     f"fetched, {sum(s['done'] for s in slices)}/{len(slices)} slices done, updated {c['updatedAt']}")
    _print(args, checkpoints, "\n".join(lines))
    return 0


def _clear(args: argparse.Namespace) -> int:
    cleared = _service().clear_sync_status(args.user, args.data_type, args.release_lease)
    leases = " and released its leases" if args.release_lease else ""
    _print(args, {"cleared": cleared}, f"cleared {cleared} status item(s) of {args.user}{leases}")
    return 0


def _retry_failed(args: argparse.Namespace) -> int:
    result = _service().retry_failed_batches(args.user, args.sync_type, args.data_type)
    _print(args, result.__dict__, f"retried {result.retried} batch(es); {result.still_failed} still failed")
    return 0 if result.success else 1


def _failed_batches(args: argparse.Namespace) -> int:
    found = _service().find_failed_batches(args.data_type, args.user)
    lines = [f"{f['userId']} {f['syncType']}: " + ", ".join(b["range"] for b in f["batches"]) for f in found]
    _print(args, found, "\n".join(lines) or f"no failed {args.data_type} batches")
    return 0


def _ui(args: argparse.Namespace) -> int:
    from shopify_pipeline.demo import run_ui

    return run_ui(orders=args.orders, port=args.port)


def _demo(args: argparse.Namespace) -> int:
    from shopify_pipeline.demo import run_demo

    return run_demo(orders=args.orders, keep_running=args.keep_running)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shopify-pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    local = commands.add_parser("local-dynamodb", help="fetch and run AWS DynamoDB Local on loopback")
    local.add_argument("--port", type=int, default=8000, help="port to listen on (0: a free one; default 8000)")
    local.add_argument("--data-dir", help="keep data in this folder (default: in memory)")
    local.add_argument("--fetch-only", action="store_true", help="only fetch the jar and print where it is")
    local.set_defaults(func=_local_dynamodb)

    tables = commands.add_parser("create-tables", help="create every table (idempotent; waits for ACTIVE)")
    tables.add_argument("--json", action="store_true", help="print JSON")
    tables.set_defaults(func=_create_tables)

    simulator = commands.add_parser("simulator", help="run the local Shopify Admin API simulator")
    from shopify_pipeline.simulator.cli import add_arguments

    add_arguments(simulator)
    simulator.set_defaults(func=_simulator)

    def command(name: str, func, help_text: str, user: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        if user:
            sub.add_argument("--user", required=True, help="the user id (a Dagster partition key)")
        sub.add_argument("--json", action="store_true", help="print JSON")
        sub.set_defaults(func=func)
        return sub

    users = command("users", _users, "add, list or remove users' shop connections", user=False)
    users.add_argument("action", choices=("add", "list", "remove", "task-size", "purge-uninstalled"),
                       help="task-size: the ECS task (--cpu, --memory; --clear) of the user's scheduled and "
                       "sensor-launched runs; purge-uninstalled: erase the data of shops that uninstalled the app "
                       "--days (default SHOPIFY_UNINSTALLED_RETENTION_DAYS, 30) or more days ago, as shop/redact "
                       "would")
    users.add_argument("--days", type=int, help="purge-uninstalled: the retention in days")
    users.add_argument("--user", help="the user id (add, remove, task-size)")
    users.add_argument("--cpu", type=int, help="task-size, add: the ECS CPU units of the user's scheduled and "
                       "sensor-launched runs (256, 512, 1024, 2048, 4096, 8192, 16384)")
    users.add_argument("--memory", type=int, help="task-size, add: MiB, a size Fargate offers with --cpu")
    users.add_argument("--clear", action="store_true", help="task-size: back to dagster.yaml's run_resources")
    users.add_argument("--shop", help="acme.myshopify.com (add)")
    users.add_argument("--token-ref", help="where the token is: env:VAR, secretsmanager:ID, literal:TOKEN (add)")
    users.add_argument("--api", choices=("graphql", "rest"),
                       help="the Shopify API syncs read through (add): graphql (the default for a new connection) or "
                       "rest (legacy; REST products carry at most 100 variants). Changing it needs a manual sync")
    users.add_argument("--replace", action="store_true",
                       help="connect another shop to an existing user: its marks reset, old records stay (add)")
    users.add_argument("--auth", choices=("static", "expiring"), default="static",
                       help="static (custom and merchant-created apps: --token-ref) or expiring (public apps, "
                       "required from 2027-01-01: refreshed tokens kept in Secrets Manager) (add)")
    users.add_argument("--client-ref", help="expiring: where the app's client id and secret are (env:VAR, "
                       "secretsmanager:ID; `client_id:client_secret` or JSON)")
    users.add_argument("--token-secret", help="expiring: the Secrets Manager secret that keeps the token pair "
                       "(default shopify-pipeline/<user>/tokens)")
    users.add_argument("--code", help="expiring: the authorization code from the app's OAuth redirect (single use)")
    users.add_argument("--refresh-token-ref", help="expiring: where a refresh token the app already holds is")
    users.add_argument("--migrate-token-ref", help="expiring: where the shop's static (non-expiring) token is, to "
                       "exchange for an expiring pair (public apps' migration)")

    webhooks = command("webhooks", _webhooks, "serve Shopify webhooks locally (development, the demo)", user=False)
    webhooks.add_argument("action", choices=("serve", "subscribe", "inbox", "replay"),
                          help="serve; subscribe a user's shop; inbox: events accepted and not applied yet (pending, "
                          "failed); replay: queue the failed ones again (a running `serve` applies them)")
    webhooks.add_argument("--port", type=int, default=8081, help="serve: port on 127.0.0.1 (default 8081)")
    webhooks.add_argument("--secret-ref",
                          help="serve: where the app's client secret (the HMAC key) is: env:VAR, secretsmanager:ID")
    webhooks.add_argument("--user", help="subscribe: the user whose shop to subscribe")
    webhooks.add_argument("--address", help="subscribe: our webhook endpoint (https://…) or EventBridge ARN")

    sync = command("sync", _sync, "sync one user now (fetch and load), with progress")
    sync.add_argument("--type", choices=SYNC_TYPE_CHOICES, default=AUTO,
                      help="auto (default: resume an unfinished sync, else daily if synced before, else initial), "
                      "initial, manual (a full re-sync) or daily")
    sync.add_argument("--data-types", type=_data_types, default=DATA_TYPES,
                      help="comma-separated subset of orders,products,customers")

    command("status", _status, "a user's durable sync status")

    checkpoint = command("checkpoint", _checkpoint, "show or clear a user's checkpoint")
    checkpoint.add_argument("action", choices=("show", "clear"))
    checkpoint.add_argument("--sync-type", choices=SYNC_TYPES, required=True)
    checkpoint.add_argument("--data-type", choices=DATA_TYPES, help="clear only this data type")

    clear = command("clear", _clear, "clear a user's (stuck) sync status")
    clear.add_argument("--data-type", choices=DATA_TYPES)
    clear.add_argument("--release-lease", action="store_true",
                       help="also release the lease of a sync whose process died (only when none is running)")

    retry = command("retry-failed", _retry_failed, "write a user's saved failed batches again")
    retry.add_argument("--sync-type", choices=SYNC_TYPES,
                       help="the sync that saved them (default: every sync type that has failed batches)")
    retry.add_argument("--data-type", choices=DATA_TYPES, required=True)

    failed = command("failed-batches", _failed_batches, "list saved failed batches (monitoring)", user=False)
    failed.add_argument("--data-type", choices=DATA_TYPES, default="orders")
    failed.add_argument("--user", help="only this user")

    ui = commands.add_parser("ui", help="the Dagster UI (dagster dev) on the demo's local state")
    ui.add_argument("--orders", type=int, default=2000, help="orders in the healthy demo shop (default 2000)")
    ui.add_argument("--port", type=int, default=3000, help="the UI's port (default 3000)")
    ui.set_defaults(func=_ui)

    demo = commands.add_parser("demo", help="run the whole pipeline locally: DynamoDB Local, simulator, Dagster")
    demo.add_argument("--orders", type=int, default=2000, help="orders in the healthy demo shop (default 2000)")
    demo.add_argument("--keep-running", action="store_true",
                      help="keep DynamoDB Local and the simulator running afterwards, until Ctrl-C")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    from shopify_pipeline.errors import PipelineError

    args = build_parser().parse_args(argv)
    # Ctrl-C (SIGINT) stops every command, servers included, even one started with SIGINT ignored, as
    # `shopify-pipeline local-dynamodb &` in a script leaves it: Python then installs no handler of its own.
    if threading.current_thread() is threading.main_thread():  # signal handlers are the main thread's to set
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return args.func(args)
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
