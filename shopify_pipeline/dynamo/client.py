"""The boto3 DynamoDB client, and the translation of its errors into ours.

Real AWS and DynamoDB Local are the same code: only `endpoint_url` differs.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterator

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

from shopify_pipeline.errors import PermanentError, TransientError
from shopify_pipeline.settings import Settings

# botocore's "standard" mode retries throttling and 5xx with exponential backoff and jitter.
# No client-side parameter validation: DynamoDB validates every request itself (a bad one is a
# ValidationException, a permanent DynamoRequestError), and botocore's check of a 25-item BatchWriteItem
# costs ~4 ms of CPU under the GIL, a third of the writer's client time (benchmark P2).
RETRY_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 5},
    connect_timeout=10,
    read_timeout=30,
    max_pool_connections=32,
    parameter_validation=False,
)

_THROTTLING = {
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "InternalServerError",
    "ServiceUnavailable",
    # A write to an item that an ongoing transaction holds (the lease item is in every fenced write).
    "TransactionConflictException",
}


class DynamoUnavailableError(TransientError):
    """DynamoDB did not answer (wrong endpoint, server down, network)."""


class TableMissingError(PermanentError):
    """A table the pipeline needs does not exist."""


class DynamoRequestError(PermanentError):
    """DynamoDB refused a request as invalid; retrying the same request cannot help."""


class ConditionFailedError(DynamoRequestError):
    """A conditional write found the item in another state than the one it required."""


class DynamoThrottledError(TransientError):
    """DynamoDB throttled us or failed internally even after botocore's retries."""


def dynamodb_client(settings: Settings, config: Config = RETRY_CONFIG):
    """A low-level boto3 DynamoDB client for `settings` (DynamoDB Local when an endpoint is set)."""
    kwargs = {"region_name": settings.aws_region, "config": config}
    if settings.dynamodb_endpoint_url:
        kwargs["endpoint_url"] = settings.dynamodb_endpoint_url
        session = boto3.session.Session()
        if session.get_credentials() is None:
            # DynamoDB Local accepts any credentials; real AWS never gets these.
            kwargs.update(aws_access_key_id="local", aws_secret_access_key="local")
    return boto3.client("dynamodb", **kwargs)


def write_batch(client, request_items: dict, settings: Settings,
                sleep: Callable[[float], None] = time.sleep) -> tuple[int, int]:
    """One BatchWriteItem, resubmitting UnprocessedItems with exponential backoff and full jitter.

    Returns (resubmissions used, write requests still unprocessed). ClientErrors propagate.
    """
    pending = request_items
    for attempt in range(settings.unprocessed_retries + 1):
        if attempt:
            cap = min(settings.unprocessed_backoff_cap_seconds,
                      settings.unprocessed_backoff_seconds * 2 ** (attempt - 1))
            sleep(random.uniform(0, cap))
        pending = client.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}
        if not pending:
            return attempt, 0
    return settings.unprocessed_retries, sum(len(requests) for requests in pending.values())


def error_code(error: ClientError) -> str:
    return error.response.get("Error", {}).get("Code", "")


def missing_table_error(table: str, endpoint_url: str | None) -> TableMissingError:
    return TableMissingError(
        f"DynamoDB table {table!r} does not exist at {endpoint_url or 'AWS'}. "
        "Create the tables with `shopify-pipeline create-tables`, or check the table-name settings "
        "(SYNC_CHECKPOINTS_TABLE, SHOPIFY_PIPELINE_TABLE_PREFIX)."
    )


@contextlib.contextmanager
def translate_errors(table: str, endpoint_url: str | None = None) -> Iterator[None]:
    """Turn botocore's exceptions about `table` into our typed errors with the fix in the message."""
    where = endpoint_url or "AWS"
    try:
        yield
    except ClientError as error:
        code = error_code(error)
        message = error.response.get("Error", {}).get("Message", "")
        if code == "ResourceNotFoundException":
            raise missing_table_error(table, endpoint_url) from error
        if code == "ConditionalCheckFailedException":
            raise ConditionFailedError(f"condition failed on table {table!r}: {message}") from error
        if code in _THROTTLING:
            raise DynamoThrottledError(f"DynamoDB throttled table {table!r}: {code}: {message}") from error
        raise DynamoRequestError(f"DynamoDB refused a request on table {table!r}: {code}: {message}") from error
    except EndpointConnectionError as error:
        raise DynamoUnavailableError(
            f"cannot reach DynamoDB at {where}. Start DynamoDB Local with `shopify-pipeline local-dynamodb` "
            "and export AWS_ENDPOINT_URL_DYNAMODB, or unset it to use real AWS."
        ) from error
    except NoCredentialsError as error:
        raise DynamoRequestError(
            "no AWS credentials found. Configure them (AWS_PROFILE, environment, instance role) or set "
            "AWS_ENDPOINT_URL_DYNAMODB to use DynamoDB Local."
        ) from error
    except BotoCoreError as error:
        raise DynamoUnavailableError(f"DynamoDB call on table {table!r} failed at {where}: {error}") from error
