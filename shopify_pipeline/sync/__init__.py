"""The sync engine: fetch pages with checkpoints, load them into tables, recover. No Dagster."""
