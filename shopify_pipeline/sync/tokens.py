"""Where a user's Shopify access token comes from. Connections store a reference, not the token.

No message here ever holds a token or any part of a reference that may be one: a token pasted where a
reference belongs would otherwise end up in logs, statuses and terminals.
"""

from __future__ import annotations

import json
import os
import re

from shopify_pipeline.dynamo.lease import HeldLease, LeaseHeldError, LeaseLostError, LeaseStore, new_owner
from shopify_pipeline.errors import PermanentError, TransientError
from shopify_pipeline.shopify.auth import ClientCredentials, TokenPair

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


def secrets_client(region: str | None = None):
    """A Secrets Manager client (boto3 reads AWS_ENDPOINT_URL_SECRETS_MANAGER for a local endpoint)."""
    import boto3

    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return boto3.client("secretsmanager", region_name=region)


def resolve_token(reference: str, secrets=None) -> str:
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
        try:
            token = (secrets or secrets_client()).get_secret_value(SecretId=value)["SecretString"]
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


# -- expiring tokens (issue #14): the app's credentials, the stored pair, the refresh lock ------------------


def resolve_client_credentials(reference: str, secrets=None) -> ClientCredentials:
    """The app's client id and secret behind `reference` (env:, secretsmanager:, literal:, as for tokens):
    a JSON object `{"client_id": …, "client_secret": …}` or `client_id:client_secret`."""
    check_token_ref(reference)
    kind, _, value = reference.partition(":")
    if kind == "env":
        text = os.environ.get(value)
        if not text:
            raise TokenUnavailableError(f"the environment variable {value} holding the app's client credentials "
                                        "is not set")
    elif kind == "secretsmanager":
        try:
            text = (secrets or secrets_client()).get_secret_value(SecretId=value)["SecretString"]
        except Exception as error:  # noqa: BLE001 - any failure means the same thing to the operator
            raise TokenUnavailableError(f"cannot read the app's client credentials from Secrets Manager secret "
                                        f"{value}: {type(error).__name__}") from None
    else:
        text = value
    client_id = client_secret = None
    try:
        parsed = json.loads(text)
        if isinstance(parsed, dict):
            client_id, client_secret = parsed.get("client_id"), parsed.get("client_secret")
    except ValueError:
        client_id, _, client_secret = text.partition(":")
    if not (isinstance(client_id, str) and _is_token_shaped(client_id)
            and isinstance(client_secret, str) and _is_token_shaped(client_secret)):
        raise TokenFormatError(
            f"the app's client credentials from {kind}:… are not `client_id:client_secret` or a JSON object with "
            "client_id and client_secret (the value is not shown)")
    return ClientCredentials(client_id, client_secret)


def token_secret_id(reference: str) -> str:
    """The Secrets Manager secret of an expiring connection's token pair (its token reference)."""
    check_token_ref(reference)
    kind, _, value = reference.partition(":")
    if kind != "secretsmanager":
        raise TokenReferenceError(
            "an expiring connection keeps its token pair in a secretsmanager:SECRET_ID reference (it is written at "
            "every refresh), not env: or literal:")
    return value


class SecretsManagerVault:
    """One shop's token pair in an AWS Secrets Manager secret (a JSON SecretString; a new version per
    refresh). Errors name the secret, never its value."""

    def __init__(self, client, secret_id: str) -> None:
        self._client = client
        self.secret_id = secret_id

    def __repr__(self) -> str:
        return f"SecretsManagerVault({self.secret_id!r})"

    def load(self) -> TokenPair:
        failure = None
        try:
            text = self._client.get_secret_value(SecretId=self.secret_id)["SecretString"]
        except Exception as error:  # noqa: BLE001 - sorted below, and nothing of it is kept
            failure = _secrets_failure(error, f"cannot read the token pair from Secrets Manager secret "
                                       f"{self.secret_id}", "restore the secret or the role's "
                                       "secretsmanager:GetSecretValue, or connect the shop again (`users add … "
                                       "--auth expiring`)")
        if failure is not None:
            raise failure
        try:
            return TokenPair.from_json(json.loads(text))
        except ValueError as error:
            raise TokenFormatError(f"Secrets Manager secret {self.secret_id} does not hold a token pair: {error}. "
                                   "Connect the shop again with `users add … --auth expiring`.") from None

    def save(self, pair: TokenPair) -> None:
        text = json.dumps(pair.to_json())
        failure = None
        try:
            try:
                self._client.put_secret_value(SecretId=self.secret_id, SecretString=text)
            except self._client.exceptions.ResourceNotFoundException:
                self._client.create_secret(Name=self.secret_id, SecretString=text, Description=SECRET_DESCRIPTION)
        except Exception as error:  # noqa: BLE001 - sorted below, and nothing of it (the request!) is kept
            failure = _secrets_failure(error, f"cannot store the token pair in Secrets Manager secret "
                                       f"{self.secret_id}", "give the role secretsmanager:PutSecretValue and "
                                       "CreateSecret on it")
        if failure is not None:
            raise failure

    def ensure_writable(self) -> None:
        """Create the secret (empty of tokens) if it does not exist yet, so that a missing permission shows
        before a single-use authorization code is spent."""
        failure = None
        try:
            self._client.describe_secret(SecretId=self.secret_id)
        except self._client.exceptions.ResourceNotFoundException:
            try:
                self._client.create_secret(Name=self.secret_id, SecretString="{}", Description=SECRET_DESCRIPTION)
            except Exception as error:  # noqa: BLE001
                failure = _secrets_failure(error, f"cannot create Secrets Manager secret {self.secret_id}",
                                           "give the role secretsmanager:CreateSecret on it")
        except Exception as error:  # noqa: BLE001
            failure = _secrets_failure(error, f"cannot read Secrets Manager secret {self.secret_id}",
                                       "give the role secretsmanager:DescribeSecret and GetSecretValue on it")
        if failure is not None:
            raise failure


SECRET_DESCRIPTION = "shopify_pipeline: a shop's expiring access token pair"
# Secrets Manager errors that pass: try again later, not "reconnect".
_PASSING = ("ThrottlingException", "InternalServiceError", "RequestTimeout", "ServiceUnavailable")


def _secrets_failure(error: Exception, what: str, fix: str) -> Exception:
    """A typed error for a Secrets Manager failure, naming its type only (never the request)."""
    code = getattr(error, "response", {}).get("Error", {}).get("Code") if hasattr(error, "response") else None
    name = code or type(error).__name__
    if code in _PASSING or code is None and not isinstance(error, ValueError | KeyError):
        # throttling, AWS's 5xx, timeouts and connection errors (botocore raises those without a code)
        return TokenStoreUnavailableError(f"{what} ({name}); the sync is tried again later")
    return TokenUnavailableError(f"{what} ({name}): {fix}")


class TokenStoreUnavailableError(TransientError):
    """Secrets Manager did not answer, or throttled: transient."""


class LeaseRefreshLock:
    """The refresh lock of one token pair: a lease item (`lease_token_refresh` under the key
    `token:<secret id>`) in the checkpoints table, so every connection and process that refreshes that pair
    shares it. Taken with a conditional write by one holder at a time (each acquisition its own owner, so two
    threads of one process exclude each other too), renewed by a heartbeat while the holder refreshes, and
    checked before the new pair is stored: a holder that lost it stores nothing. A holder that dies frees it
    when the lease expires (at once for a dead process of this host)."""

    DATA_TYPE = "token_refresh"

    def __init__(self, leases: LeaseStore, secret_id: str, seconds: float = 60.0) -> None:
        self.leases, self.key, self.seconds = leases, f"token:{secret_id}", seconds

    def acquire(self) -> HeldLease | None:
        held = HeldLease(self.leases, self.key, self.DATA_TYPE, new_owner(), self.seconds, self.seconds / 4)
        try:
            return held.__enter__()
        except LeaseHeldError:
            return None

    def held(self, handle: object) -> bool:
        """Whether `handle`'s lease is still ours (a consistent read)."""
        try:
            handle.check()
        except LeaseLostError:
            return False
        return True

    def release(self, handle: object) -> None:
        if isinstance(handle, HeldLease):
            handle.__exit__(None, None, None)
