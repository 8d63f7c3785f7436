"""The Dagster layer: partitions, resources, assets, checks, jobs, schedules and sensors over the engine."""
