"""Where a user's Shopify access token comes from. Connections store a reference, not the token."""

from __future__ import annotations

import os

from shopify_pipeline.errors import PermanentError


class TokenUnavailableError(PermanentError):
    """The token reference cannot be resolved."""


def resolve_token(reference: str) -> str:
    """The token behind `reference`:

    - `env:VAR`: the environment variable VAR;
    - `secretsmanager:SECRET_ID`: an AWS Secrets Manager secret (its SecretString);
    - `literal:TOKEN`: the token itself, for demos and tests only (it is then stored in DynamoDB).
    """
    kind, _, value = reference.partition(":")
    if kind == "env":
        token = os.environ.get(value)
        if not token:
            raise TokenUnavailableError(f"the environment variable {value} holding the Shopify token is not set")
        return token
    if kind == "secretsmanager":
        import boto3

        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        try:
            return boto3.client("secretsmanager", region_name=region).get_secret_value(SecretId=value)["SecretString"]
        except Exception as error:  # noqa: BLE001 - any failure means the same thing to the operator
            raise TokenUnavailableError(
                f"cannot read the Shopify token from Secrets Manager secret {value}: {type(error).__name__}"
            ) from None
    if kind == "literal" and value:
        return value
    raise TokenUnavailableError(
        "a token reference must be env:VAR, secretsmanager:SECRET_ID or literal:TOKEN "
        f"(got a value starting with {kind[:10]!r})"
    )
