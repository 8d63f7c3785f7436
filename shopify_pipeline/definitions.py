"""The one Dagster `Definitions` of this code location."""

import dagster as dg

defs = dg.Definitions()
