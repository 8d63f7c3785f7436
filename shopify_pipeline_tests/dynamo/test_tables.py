import pytest

from shopify_pipeline.dynamo.client import DynamoUnavailableError, TableMissingError, dynamodb_client
from shopify_pipeline.dynamo.state import StateStore
from shopify_pipeline.dynamo.tables import create_tables, table_specs
from shopify_pipeline.settings import Settings


def test_create_tables_leaves_every_table_active_with_ttl(settings, client):
    names = settings.tables
    for spec in table_specs(names):
        table = client.describe_table(TableName=spec.name)["Table"]
        assert table["TableStatus"] == "ACTIVE"
        assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    ttl = client.describe_time_to_live(TableName=names.checkpoints)["TimeToLiveDescription"]
    assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "ttl"}
    ttl = client.describe_time_to_live(TableName=names.pages)["TimeToLiveDescription"]
    assert ttl["TimeToLiveStatus"] == "ENABLED"
    keys = client.describe_table(TableName=names.checkpoints)["Table"]["KeySchema"]
    assert keys == [{"AttributeName": "userId", "KeyType": "HASH"}, {"AttributeName": "syncType", "KeyType": "RANGE"}]


def test_create_tables_twice_is_harmless(settings, client):
    client.put_item(TableName=settings.tables.orders, Item={"userId": {"S": "u"}, "id": {"N": "1"}})
    again = create_tables(client, settings.tables)
    assert set(again.values()) == {"exists"}
    assert client.get_item(TableName=settings.tables.orders, Key={"userId": {"S": "u"}, "id": {"N": "1"}})["Item"]


def test_checkpoints_table_name_comes_from_the_seeds_variable():
    settings = Settings.from_env({"SYNC_CHECKPOINTS_TABLE": "my_checkpoints", "SHOPIFY_PIPELINE_TABLE_PREFIX": "dev_"})
    assert settings.tables.checkpoints == "my_checkpoints"
    assert settings.tables.orders == "dev_shopify_orders"


def test_unknown_table_names_the_fix(dynamodb_endpoint):
    settings = Settings.from_env({"AWS_ENDPOINT_URL_DYNAMODB": dynamodb_endpoint}).with_prefix("missing_")
    with pytest.raises(TableMissingError, match="shopify-pipeline create-tables"):
        StateStore(dynamodb_client(settings), settings).get_status("u1")


def test_wrong_endpoint_names_the_fix():
    settings = Settings.from_env({"AWS_ENDPOINT_URL_DYNAMODB": "http://127.0.0.1:9"})
    from botocore.config import Config

    client = dynamodb_client(settings, Config(retries={"max_attempts": 1}, connect_timeout=1))
    with pytest.raises(DynamoUnavailableError, match="shopify-pipeline local-dynamodb"):
        StateStore(client, settings).get_status("u1")


def test_an_inbox_table_made_by_an_older_release_gets_its_stream_and_index(settings, client):
    inbox = settings.tables.webhook_inbox
    client.delete_table(TableName=inbox)
    client.get_waiter("table_not_exists").wait(TableName=inbox, WaiterConfig={"Delay": 1})
    client.create_table(TableName=inbox, BillingMode="PAY_PER_REQUEST",  # as a release before the inbox's stream
                        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}])
    assert create_tables(client, settings.tables)[inbox] == "exists"
    table = client.describe_table(TableName=inbox)["Table"]
    assert table["StreamSpecification"] == {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}
    assert [index["IndexName"] for index in table["GlobalSecondaryIndexes"]] == ["due"]
    assert create_tables(client, settings.tables)[inbox] == "exists"  # and again: nothing more to do
