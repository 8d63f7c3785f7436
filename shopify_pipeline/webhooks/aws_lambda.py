"""The webhook handler as an AWS Lambda function: `shopify_pipeline.webhooks.aws_lambda.handler`.

Five event shapes reach it, all through the same `WebhookHandler`:

- **HTTPS**: a Lambda function URL or API Gateway (HTTP API, payload 2.0, or REST API) invocation. The raw body
  (base64-decoded when `isBase64Encoded`) and headers are checked with the app's HMAC, and the events are
  queued in the webhook inbox table before the answer (Shopify waits 5 s and retries anything but 2xx);
  nothing is read from Shopify here.
- **The inbox table's stream** (DynamoDB Streams, NEW_AND_OLD_IMAGES): each new item (or one queued again) is
  applied, then deleted. A failed apply is counted on the item (retried after 2, 4 … minutes; after 8 attempts
  kept as failed for `webhooks replay`); only a failure of the inbox itself is reported in `batchItemFailures`
  (enable ReportBatchItemFailures on the event source mapping).
- **The sweep**: `{"action": "sweep_webhook_inbox"}` from an EventBridge Scheduler schedule (every minute)
  queues the items due for a retry again, through the stream.
- **EventBridge → SQS → Lambda**: an SQS batch whose messages are EventBridge events of Shopify's partner event
  source. No HMAC (AWS delivered them); a message that fails is reported in `batchItemFailures`, so SQS gives
  back only that one (enable ReportBatchItemFailures on the event source mapping).
- **EventBridge → Lambda** directly: one event; a failure raises, so Lambda's retry and the rule's DLQ apply.

An EventBridge event is taken only from Shopify's partner event source (`source` starting with
`aws.partner/shopify.com`, or exactly `SHOPIFY_EVENTBRIDGE_SOURCE` when set); anything with HTTP fields goes
through the HMAC. The Lambda context bounds each event's claim, so one left by a timeout ends with it.

Configured by the environment, as the CLI: the DynamoDB tables (`SHOPIFY_PIPELINE_TABLE_PREFIX`, …), and
`SHOPIFY_APP_SECRET_REF` (where the app's client secret is: `secretsmanager:ID` in production). The handler and
its clients are built once per container.
"""

from __future__ import annotations

import base64
import json
import logging
import os

from shopify_pipeline.webhooks.handler import Delivery, WebhookHandler
from shopify_pipeline.webhooks.inbox import PENDING, WebhookInbox, apply_from_inbox, item_from_image

log = logging.getLogger(__name__)

SWEEP_ACTION = "sweep_webhook_inbox"
_handler: WebhookHandler | None = None
_inbox: WebhookInbox | None = None


def webhook_handler() -> WebhookHandler:
    """The container's handler, built on first use from the environment."""
    global _handler
    if _handler is None:
        from shopify_pipeline.sync.service import SyncService
        from shopify_pipeline.sync.tokens import resolve_token

        engine = SyncService.from_env().engine
        reference = os.environ.get("SHOPIFY_APP_SECRET_REF")
        if not reference:
            raise RuntimeError("SHOPIFY_APP_SECRET_REF is not set: where the app's client secret is "
                               "(secretsmanager:ID), the key of Shopify's HMAC")
        _handler = WebhookHandler(engine, resolve_token(reference, engine.secrets))
    return _handler


def webhook_inbox() -> WebhookInbox:
    """The container's inbox (the table named by the environment, like every table)."""
    global _inbox
    if _inbox is None:
        engine = webhook_handler().engine
        _inbox = WebhookInbox(engine.dynamodb, engine.settings.tables.webhook_inbox)
    return _inbox


def handler(event: dict, context: object = None) -> dict:
    """The Lambda entry point (see the module doc for the shapes it takes)."""
    webhook = webhook_handler()
    if event.get("action") == SWEEP_ACTION:
        return _sweep()
    if "requestContext" in event or "headers" in event:  # HTTPS: always through the HMAC
        body = event.get("body") or ""
        raw = base64.b64decode(body) if event.get("isBase64Encoded") else body.encode()
        outcome, _ = webhook.accept(Delivery.from_http(event.get("headers") or {}, raw), webhook_inbox())
        return {"statusCode": outcome.status, "headers": {"Content-Type": "application/json"},
                "body": json.dumps({"result": outcome.result, "detail": outcome.detail})}
    if isinstance(event.get("Records"), list):
        if any(record.get("eventSource") == "aws:dynamodb" for record in event["Records"]):
            return _inbox_stream(webhook, event["Records"], context)
        return _sqs_batch(webhook, event["Records"], context)
    if "detail" in event and "detail-type" in event:
        if not _from_shopify(event):
            log.warning("an EventBridge event from %s refused: not Shopify's partner event source",
                        str(event.get("source"))[:100])
            return {"status": 403, "result": "rejected"}
        outcome = webhook.handle(Delivery.from_eventbridge(event), context)
        if outcome.status >= 500 or outcome.status == 409:
            raise RuntimeError(f"webhook not applied ({outcome.status} {outcome.result}); Lambda retries it")
        return {"status": outcome.status, "result": outcome.result}
    return {"status": 400, "result": "rejected", "detail": "not an HTTPS, SQS or EventBridge event"}


def _from_shopify(event: dict) -> bool:
    """Whether an EventBridge event comes from Shopify's partner event source (and, when
    SHOPIFY_EVENTBRIDGE_SOURCE is set, exactly that source)."""
    source = str(event.get("source") or "")
    wanted = os.environ.get("SHOPIFY_EVENTBRIDGE_SOURCE")
    return source == wanted if wanted else source.startswith("aws.partner/shopify.com")


def _sqs_batch(webhook: WebhookHandler, records: list[dict], context: object) -> dict:
    failures = []
    for record in records:
        try:
            event = json.loads(record.get("body") or "{}")
            if not _from_shopify(event):
                log.warning("SQS message %s refused: not from Shopify's partner event source", record.get("messageId"))
                continue  # not retried: it will never be Shopify's
            outcome = webhook.handle(Delivery.from_eventbridge(event), context)
            failed = outcome.status >= 500 or outcome.status == 409
        except Exception as error:  # noqa: BLE001 - this message is retried by SQS; the others go on
            log.warning("webhook message %s failed: %s", record.get("messageId"), type(error).__name__)
            failed = True
        if failed:
            failures.append({"itemIdentifier": record.get("messageId")})
    return {"batchItemFailures": failures}


def _inbox_stream(webhook: WebhookHandler, records: list[dict], context: object) -> dict:
    """Apply the inbox items a stream batch adds, or that `webhooks replay` or the sweep queue again (a new
    `replayedAt`); other changes (an attempt counted, a delete) are the applier's own and pass. A failed apply
    is counted on its item and retried by the scheduled sweep after its delay, so the shard never waits on
    it; only a failure of the inbox itself is reported in `batchItemFailures` (the stream retries that)."""
    inbox, failures = webhook_inbox(), []
    for record in records:
        change = record.get("dynamodb") or {}
        new, old = change.get("NewImage"), change.get("OldImage") or {}
        queued = record.get("eventName") == "INSERT" or (
            record.get("eventName") == "MODIFY" and new and new.get("replayedAt") != old.get("replayedAt"))
        if not queued or not new or new.get("status", {}).get("S") != PENDING:
            continue
        try:
            current = inbox.get(item_from_image(new).event_id)
            if current is not None and current.status == PENDING:  # else applied already, or failed for good
                apply_from_inbox(webhook, inbox, current, context)
        except Exception as error:  # noqa: BLE001 - the inbox itself failed: the stream gives this record back
            log.warning("webhook inbox record %s: %s", change.get("SequenceNumber"), type(error).__name__)
            failures.append({"itemIdentifier": change.get("SequenceNumber")})
    return {"batchItemFailures": failures}


def _sweep() -> dict:
    """The scheduled sweep (EventBridge Scheduler, every minute, input {"action": "sweep_webhook_inbox"}): the
    items due for a retry go back to the stream."""
    requeued = webhook_inbox().requeue_due()
    if requeued:
        log.info("webhook inbox: %d event(s) queued again for a retry", requeued)
    return {"requeued": requeued}
