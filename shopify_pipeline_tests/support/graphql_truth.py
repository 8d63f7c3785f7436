"""The simulator's records as GraphQL documents, read inside the simulator: the source of truth for GraphQL
syncs.

It runs the fields a sync stores (`RECORD_FIELDS`) straight through the simulator's schema, without HTTP,
cost, pacing or our GraphQL client, and pages every nested connection with the largest page Shopify allows.
So a stored document equal to this one went through our whole path (cost-sized pages, nested completion,
staging, DynamoDB) unchanged.
"""

from __future__ import annotations

import json
import re

from graphql import execute_sync, parse

from shopify_pipeline.exact_json import parse_json
from shopify_pipeline.shopify.sources import NESTED, RECORD_FIELDS, nested_query
from shopify_pipeline.simulator.graphql_api import SCHEMA, Context, QueryRoot, resolve_field, resolve_type


def _run(sim, shop_name: str, query: str, variables: dict) -> dict:
    context = Context(sim.shops[shop_name], sim.cursors, {})
    result = execute_sync(SCHEMA, parse(query), root_value=QueryRoot(context), context_value=context,
                          variable_values=variables, field_resolver=resolve_field, type_resolver=resolve_type)
    assert not result.errors, result.errors
    return parse_json(json.dumps(result.data))  # fractions as Decimal, as our parser reads them


def graphql_truth(sim, shop_name: str, data_type: str) -> dict[int, dict]:
    """Every live record of `data_type` as a sync stores it, by legacyResourceId."""
    field = NESTED[data_type][0]
    fields = re.sub(rf"{field}\(first: \d+\)", f"{field}(first: 250)", RECORD_FIELDS[data_type])
    query = (f"query($after: String) {{ {data_type}(first: 250, after: $after) {{ nodes {{ {fields} }} "
             "pageInfo { hasNextPage endCursor } } }")
    documents: dict[int, dict] = {}
    after = None
    while True:
        connection = _run(sim, shop_name, query, {"after": after})[data_type]
        for node in connection["nodes"]:
            nested = node[field]
            while nested["pageInfo"]["hasNextPage"]:
                more = _run(sim, shop_name, nested_query(data_type),
                            {"id": node["id"], "first": 250, "after": nested["pageInfo"]["endCursor"]})
                nested["nodes"].extend(more["node"][field]["nodes"])
                nested["pageInfo"] = more["node"][field]["pageInfo"]
            del nested["pageInfo"]
            documents[int(node["legacyResourceId"])] = node
        if not connection["pageInfo"]["hasNextPage"]:
            return documents
        after = connection["pageInfo"]["endCursor"]
