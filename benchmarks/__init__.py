"""Benchmarks of the Shopify → DynamoDB pipeline (see benchmarks/README.md)."""
