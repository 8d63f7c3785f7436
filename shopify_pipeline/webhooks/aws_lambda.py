"""The webhook handler as an AWS Lambda function: `shopify_pipeline.webhooks.aws_lambda.handler`.

Three event shapes reach it, all through the same `WebhookHandler`:

- **HTTPS**: a Lambda function URL or API Gateway (HTTP API, payload 2.0, or REST API) invocation. The raw body
  (base64-decoded when `isBase64Encoded`) and headers are checked with the app's HMAC; the answer is the
  handler's status (Shopify retries anything but 2xx).
- **EventBridge → SQS → Lambda**: an SQS batch whose messages are EventBridge events of Shopify's partner event
  source. No HMAC (AWS delivered them); a message that fails is reported in `batchItemFailures`, so SQS gives
  back only that one (enable ReportBatchItemFailures on the event source mapping).
- **EventBridge → Lambda** directly: one event; a failure raises, so Lambda's retry and the rule's DLQ apply.

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

log = logging.getLogger(__name__)

_handler: WebhookHandler | None = None


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


def handler(event: dict, context: object = None) -> dict:
    """The Lambda entry point (see the module doc for the shapes it takes)."""
    webhook = webhook_handler()
    if isinstance(event.get("Records"), list):
        return _sqs_batch(webhook, event["Records"])
    if "detail" in event and "detail-type" in event:
        outcome = webhook.handle(Delivery.from_eventbridge(event))
        if outcome.status >= 500 or outcome.status == 409:
            raise RuntimeError(f"webhook not applied ({outcome.status} {outcome.result}); Lambda retries it")
        return {"status": outcome.status, "result": outcome.result}
    body = event.get("body") or ""
    raw = base64.b64decode(body) if event.get("isBase64Encoded") else body.encode()
    outcome = webhook.handle(Delivery.from_http(event.get("headers") or {}, raw))
    return {"statusCode": outcome.status, "headers": {"Content-Type": "application/json"},
            "body": json.dumps({"result": outcome.result, "detail": outcome.detail})}


def _sqs_batch(webhook: WebhookHandler, records: list[dict]) -> dict:
    failures = []
    for record in records:
        try:
            outcome = webhook.handle(Delivery.from_eventbridge(json.loads(record.get("body") or "{}")))
            failed = outcome.status >= 500 or outcome.status == 409
        except Exception as error:  # noqa: BLE001 - this message is retried by SQS; the others go on
            log.warning("webhook message %s failed: %s", record.get("messageId"), type(error).__name__)
            failed = True
        if failed:
            failures.append({"itemIdentifier": record.get("messageId")})
    return {"batchItemFailures": failures}
