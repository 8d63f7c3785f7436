"""Shopify Admin API client: session, pacing, paging, errors. No Dagster, no DynamoDB."""
