"""DynamoDB: table specs, item codec, state stores, batch writer. No Dagster, no Shopify."""
