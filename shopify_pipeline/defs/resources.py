"""Resources: where DynamoDB is, how we talk to Shopify, and the sync engine built from both once per run.

`SHOPIFY_PIPELINE_ENV` chooses the set (`resources_from_env`):
- `local` (default): DynamoDB Local at `AWS_ENDPOINT_URL_DYNAMODB`, simulator shops on loopback allowed;
- `aws`: real DynamoDB through boto3's credential chain, only `*.myshopify.com` shops.
"""

import os
import warnings
from collections.abc import Mapping
from dataclasses import replace

import boto3
import dagster as dg
from botocore.config import Config
from dagster_aws.secretsmanager import SecretsManagerResource
from dagster_aws.utils import ResourceWithBoto3Configuration
from pydantic import Field, PrivateAttr

from shopify_pipeline.dynamo.client import RETRY_CONFIG
from shopify_pipeline.settings import Settings, SettingsError, ShopifySettings
from shopify_pipeline.sync.engine import SyncEngine, SyncOptions

ENVIRONMENTS = ("local", "aws")
_SHOPIFY_DEFAULTS = ShopifySettings()
_DYNAMO_DEFAULTS = Settings()


class DynamoDBResource(ResourceWithBoto3Configuration):
    """DynamoDB, configured like every dagster-aws boto3 resource (region, endpoint_url, profile, keys)."""

    table_prefix: str = Field(default="", description="Prefix of every table name (one set of tables per env).")
    document_format: str = Field(
        default=_DYNAMO_DEFAULTS.document_format,
        description="How documents are stored: compressed (zlib JSON, cheaper) or native (a DynamoDB map).",
    )

    def settings(self) -> Settings:
        """The engine's settings for these tables at this endpoint. Table names follow the same variables
        as the CLI's (SYNC_CHECKPOINTS_TABLE, SHOPIFY_ORDERS_TABLE, …) with this resource's prefix."""
        base = Settings.from_env({**os.environ, "SHOPIFY_PIPELINE_TABLE_PREFIX": self.table_prefix})
        return replace(Settings(tables=base.tables, document_format=self.document_format,
                                lease_seconds=base.lease_seconds),
                       dynamodb_endpoint_url=self.endpoint_url or None,
                       aws_region=self.region_name or _DYNAMO_DEFAULTS.aws_region)

    def client(self):
        """A low-level boto3 DynamoDB client with botocore's standard retries (throttling, 5xx)."""
        session = boto3.session.Session(
            profile_name=self.profile_name,
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
            aws_session_token=self.aws_session_token,
        )
        credentials = {}
        if self.endpoint_url and session.get_credentials() is None:
            # DynamoDB Local accepts any credentials; real AWS never gets these.
            credentials = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}
        config = RETRY_CONFIG.merge(Config(retries={"mode": "standard", "max_attempts": self.max_attempts}))
        return session.client(
            "dynamodb", region_name=self.region_name or _DYNAMO_DEFAULTS.aws_region,
            endpoint_url=self.endpoint_url or None, use_ssl=self.use_ssl, verify=self.verify,
            config=config, **credentials,
        )


class ShopifyResource(dg.ConfigurableResource):
    """How we talk to Shopify's Admin REST API: version, page size, timeouts, retries and pacing."""

    api_version: str = Field(default=_SHOPIFY_DEFAULTS.api_version, description="Admin API version, e.g. 2025-10.")
    page_size: int = Field(default=_SHOPIFY_DEFAULTS.page_size, description="Records per page (1-250).")
    timeout_seconds: float = Field(default=_SHOPIFY_DEFAULTS.timeout_seconds, description="Per-request timeout.")
    retries: int = Field(default=_SHOPIFY_DEFAULTS.retries, description="Retries of a failing request.")
    backoff_seconds: float = Field(
        default=_SHOPIFY_DEFAULTS.backoff_seconds, description="First backoff between retries (doubles each time)."
    )
    pacing: str = Field(
        default=_SHOPIFY_DEFAULTS.pacing,
        description="adaptive (learn the leak rate from the call-limit header) or fixed (the seed's gaps).",
    )
    allow_local_shops: bool = Field(
        default=False, description="Allow http://127.0.0.1 shops (the simulator); never in production."
    )
    max_response_bytes: int = Field(
        default=_SHOPIFY_DEFAULTS.max_response_bytes,
        description="An answer larger than this fails its page before it is read into memory.",
    )
    token_refresh_margin_seconds: float = Field(
        default=_SHOPIFY_DEFAULTS.token_refresh_margin_seconds,
        description="Expiring access tokens are refreshed this long before they expire.",
    )

    def settings(self) -> ShopifySettings:
        """These fields as the engine's ShopifySettings; SettingsError names a bad value."""
        return ShopifySettings(
            api_version=self.api_version, page_size=self.page_size, timeout_seconds=self.timeout_seconds,
            retries=self.retries, backoff_seconds=self.backoff_seconds, pacing=self.pacing,
            allow_local_shops=self.allow_local_shops, max_response_bytes=self.max_response_bytes,
            token_refresh_margin_seconds=self.token_refresh_margin_seconds,
        ).validated()


class SyncEngineResource(dg.ConfigurableResource):
    """The sync engine (checkpoints, staged pages, status, failed batches, lease), built once per run."""

    dynamodb: DynamoDBResource
    shopify: ShopifyResource
    # Tokens behind secretsmanager: references, and expiring connections' token pairs (dagster-aws's resource).
    secrets: SecretsManagerResource | None = None
    slices: int = Field(default=SyncOptions.slices, description="At most this many slices a full sync fetches "
                        "in parallel (planned from Shopify's counts and the rate limit).")
    min_records_to_slice: int = Field(
        default=SyncOptions.min_records_to_slice, description="Smaller listings are fetched as one slice."
    )
    min_pages_per_slice: int = Field(
        default=SyncOptions.min_pages_per_slice, description="A full sync gets one slice per this many pages of "
        "Shopify's count (1 000 orders at 250 a page: one slice).")
    bulk_threshold: int | None = Field(
        default=SyncOptions.bulk_threshold,
        description="Full syncs of GraphQL connections with at least this many records use one bulk operation "
        "instead of pages (None: never).",
    )
    bulk_poll_seconds: float = Field(default=SyncOptions.bulk_poll[0],
                                     description="First poll interval of a bulk operation (it doubles).")
    bulk_max_poll_seconds: float = Field(default=SyncOptions.bulk_poll[1],
                                         description="Longest poll interval of a bulk operation.")
    bulk_max_run_seconds: float = Field(default=SyncOptions.bulk_poll[2],
                                        description="A bulk operation still running this long after it was "
                                        "created is cancelled and the data type is paged (Shopify: 10 days).")
    bulk_slot_wait_seconds: float = Field(default=SyncOptions.bulk_slot_wait,
                                          description="How long to wait for a free bulk slot when the shop runs "
                                          "as many bulk queries as it allows; then the step fails as transient.")

    _engine: SyncEngine | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._engine = self._build()

    def engine(self) -> SyncEngine:
        """The run's engine (built here when the resource is used outside a run, e.g. in a script)."""
        if self._engine is None:
            self._engine = self._build()
        return self._engine

    def _build(self) -> SyncEngine:
        options = SyncOptions(slices=self.slices, min_records_to_slice=self.min_records_to_slice,
                              min_pages_per_slice=self.min_pages_per_slice,
                              bulk_threshold=self.bulk_threshold,
                              bulk_poll=(self.bulk_poll_seconds, self.bulk_max_poll_seconds,
                                         self.bulk_max_run_seconds),
                              bulk_slot_wait=self.bulk_slot_wait_seconds)
        secrets = self.secrets.get_client() if self.secrets is not None else None
        return SyncEngine(self.dynamodb.settings(), self.shopify.settings(), options, self.dynamodb.client(),
                          secrets=secrets)


def _env_or(environ: Mapping[str, str], name: str, default: str) -> str | dg.EnvVar:
    """`EnvVar(name)` when the variable is set (the UI shows where the value comes from), else `default`."""
    return dg.EnvVar(name) if environ.get(name) else default


def resources_from_env(environ: Mapping[str, str] | None = None) -> dict[str, dg.ConfigurableResource]:
    """The resources for `SHOPIFY_PIPELINE_ENV` (local or aws); table prefix and Shopify knobs from the
    variables of docs/dagster.md. Raises SettingsError for an unknown environment."""
    env = os.environ if environ is None else environ
    name = env.get("SHOPIFY_PIPELINE_ENV", "local")
    if name not in ENVIRONMENTS:
        raise SettingsError(f"SHOPIFY_PIPELINE_ENV={name!r} is unknown: use local (DynamoDB Local) or aws")
    local = name == "local"
    shopify = ShopifySettings.from_env(env)
    dynamodb = DynamoDBResource(
        # Local: the endpoint `shopify-pipeline local-dynamodb` printed; AWS: boto3's default endpoint.
        endpoint_url=dg.EnvVar("AWS_ENDPOINT_URL_DYNAMODB") if local else None,
        region_name=_env_or(env, "AWS_REGION", env.get("AWS_DEFAULT_REGION") or _DYNAMO_DEFAULTS.aws_region),
        table_prefix=_env_or(env, "SHOPIFY_PIPELINE_TABLE_PREFIX", ""),
        document_format=_env_or(env, "SHOPIFY_DOCUMENT_FORMAT", _DYNAMO_DEFAULTS.document_format),
    )
    shopify_resource = ShopifyResource(
        api_version=shopify.api_version, page_size=shopify.page_size, timeout_seconds=shopify.timeout_seconds,
        pacing=shopify.pacing, allow_local_shops=local, max_response_bytes=shopify.max_response_bytes,
        token_refresh_margin_seconds=shopify.token_refresh_margin_seconds,
    )
    secrets_endpoint = env.get("AWS_ENDPOINT_URL_SECRETS_MANAGER") if local else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)  # dagster-aws marks it beta; its fields are boto3's
        secrets = SecretsManagerResource(
            region_name=_env_or(env, "AWS_REGION", env.get("AWS_DEFAULT_REGION") or _DYNAMO_DEFAULTS.aws_region),
            # Local: a local Secrets Manager (moto's server) when one is named, with dummy keys it does not
            # check; AWS: boto3's default endpoint and credential chain.
            endpoint_url=secrets_endpoint or None,
            **({"aws_access_key_id": "local", "aws_secret_access_key": "local"} if secrets_endpoint else {}),
        )
    return {"sync_engine": SyncEngineResource(dynamodb=dynamodb, shopify=shopify_resource, secrets=secrets)}
