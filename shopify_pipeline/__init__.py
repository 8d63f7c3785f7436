"""Keep each connected user's Shopify orders, products and customers in DynamoDB, with Dagster."""
