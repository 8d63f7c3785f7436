"""Shared fixtures: one real DynamoDB Local per test session, fresh tables per test."""

from __future__ import annotations

import os
import uuid

import pytest

from shopify_pipeline.dynamo.client import dynamodb_client
from shopify_pipeline.dynamo.local import LocalDynamoDB
from shopify_pipeline.dynamo.tables import create_tables
from shopify_pipeline.local_aws import LocalSecretsManager
from shopify_pipeline.settings import Settings


@pytest.fixture(scope="session")
def dynamodb_endpoint() -> str:
    """The endpoint of DynamoDB Local: started for this session unless SHOPIFY_PIPELINE_TEST_DYNAMODB
    names one that is already running (handy while iterating)."""
    existing = os.environ.get("SHOPIFY_PIPELINE_TEST_DYNAMODB")
    if existing:
        yield existing
        return
    with LocalDynamoDB() as server:
        yield server.endpoint_url


@pytest.fixture(scope="session")
def secrets_manager():
    """A local Secrets Manager (moto's standalone server) for this session."""
    with LocalSecretsManager() as server:
        yield server


@pytest.fixture
def settings(dynamodb_endpoint: str) -> Settings:
    """Settings whose tables (prefixed uniquely for this test) exist in DynamoDB Local."""
    base = Settings.from_env({"AWS_ENDPOINT_URL_DYNAMODB": dynamodb_endpoint})
    test_settings = base.with_prefix(f"t{uuid.uuid4().hex[:8]}_")
    create_tables(dynamodb_client(test_settings), test_settings.tables)
    return test_settings


@pytest.fixture
def client(settings: Settings):
    return dynamodb_client(settings)
