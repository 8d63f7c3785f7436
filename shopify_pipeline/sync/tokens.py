"""Where a user's Shopify access token comes from. Connections store a reference, not the token.

No message here ever holds a token or any part of a reference that may be one: a token pasted where a
reference belongs would otherwise end up in logs, statuses and terminals.
"""

from __future__ import annotations

import os
import re

from shopify_pipeline.errors import PermanentError

SCHEMES = ("env", "secretsmanager", "literal")
# Upper case only: a pasted token (mixed or lower case) is refused here instead of echoed later as
# "the environment variable … is not set".
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
# shpat_, shpca_, shppa_, shpss_ …: Shopify's access-token prefixes.
_SHOPIFY_TOKEN = re.compile(r"^shp[a-z]{2}_")
_ACCEPTED = (
    "use env:VAR (an environment variable holding the token, e.g. env:ACME_TOKEN), "
    "secretsmanager:SECRET_ID (an AWS Secrets Manager secret name or ARN) or literal:TOKEN (demos and tests only)"
)


class TokenUnavailableError(PermanentError):
    """The token reference cannot be resolved. `reason` goes into the failed status, as for Shopify errors."""

    reason = "token_unavailable"


class TokenReferenceError(TokenUnavailableError):
    """A token reference without a known scheme, or with an unusable value (such as a pasted token)."""

    reason = "bad_token_reference"


class TokenFormatError(TokenUnavailableError):
    """The resolved token holds whitespace, control or non-ASCII characters, which no Shopify token has."""

    reason = "malformed_token"


def check_token_ref(reference: str) -> str:
    """`reference`, or TokenReferenceError (whose message shows no part of it).

    Accepted: `env:VAR` (VAR a variable name), `secretsmanager:SECRET_ID`, `literal:TOKEN`, values non-empty.
    """
    kind, colon, value = reference.partition(":")
    if not colon or kind not in SCHEMES or not value:
        raise TokenReferenceError(f"the token reference is not usable (its value is not shown): {_ACCEPTED}")
    if kind != "literal" and _SHOPIFY_TOKEN.match(value):
        raise TokenReferenceError(
            f"the token reference {kind}:… holds what looks like a Shopify token itself (not shown): put the "
            f"token in an environment variable or secret and refer to that; {_ACCEPTED}"
        )
    if kind == "env" and not _ENV_NAME.match(value):
        raise TokenReferenceError(
            "the token reference env:… does not name an environment variable (UPPER_CASE letters, digits and _, "
            f"not starting with a digit; the value is not shown): {_ACCEPTED}"
        )
    if kind == "secretsmanager" and not _is_token_shaped(value):
        raise TokenReferenceError(
            "the token reference secretsmanager:… holds spaces or control characters, which no secret id has "
            f"(the value is not shown): {_ACCEPTED}"
        )
    if kind == "literal" and not _is_token_shaped(value):
        raise TokenReferenceError(
            "the token of the literal:… reference has whitespace, a newline, control or non-ASCII characters, "
            "which no Shopify token has: strip them (the token is not shown)"
        )
    return reference


def resolve_token(reference: str) -> str:
    """The token behind `reference`:

    - `env:VAR`: the environment variable VAR;
    - `secretsmanager:SECRET_ID`: an AWS Secrets Manager secret (its SecretString);
    - `literal:TOKEN`: the token itself, for demos and tests only (it is then stored in DynamoDB).

    Raises TokenUnavailableError (a TokenReferenceError for a bad reference, a TokenFormatError for a
    token with whitespace or control characters that requests would refuse as a header).
    """
    check_token_ref(reference)
    kind, _, value = reference.partition(":")
    if kind == "env":
        token = os.environ.get(value)
        if not token:
            raise TokenUnavailableError(f"the environment variable {value} holding the Shopify token is not set")
        return _check_token(token, f"env:{value}")
    if kind == "secretsmanager":
        import boto3

        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        try:
            token = boto3.client("secretsmanager", region_name=region).get_secret_value(SecretId=value)["SecretString"]
        except Exception as error:  # noqa: BLE001 - any failure means the same thing to the operator
            raise TokenUnavailableError(
                f"cannot read the Shopify token from Secrets Manager secret {value}: {type(error).__name__}"
            ) from None
        return _check_token(token, f"secretsmanager:{value}")
    return value  # literal: already checked by check_token_ref


def _is_token_shaped(text: str) -> bool:
    return bool(text) and all(33 <= ord(char) <= 126 for char in text)


def _check_token(token: str, where: str) -> str:
    """`token`, or TokenFormatError naming `where` (scheme and variable, never the token)."""
    if _is_token_shaped(token):
        return token
    if token.strip() != token and _is_token_shaped(token.strip()):
        raise TokenFormatError(
            f"the Shopify token from {where} has leading or trailing whitespace or a newline (as `echo` or a "
            "copied line adds): strip it where the token is stored, e.g. `printf %s \"$TOKEN\"` instead of "
            "`echo`; the token is not shown"
        )
    raise TokenFormatError(
        f"the Shopify token from {where} is empty or holds spaces, control or non-ASCII characters, which no "
        "Shopify token has: strip them (copy the token again, as one word) where it is stored; the token is "
        "not shown"
    )
