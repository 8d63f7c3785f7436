"""A local Shopify Admin API server for demos, tests and benchmarks. Imports nothing else of the package."""
