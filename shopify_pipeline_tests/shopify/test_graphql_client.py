"""The GraphQL client against a scripted loopback server: cost pacing, THROTTLED, typed errors, paging."""

import json
import logging

import pytest

from shopify_pipeline.settings import ShopifySettings
from shopify_pipeline.shopify.client import ShopifyClient
from shopify_pipeline.shopify.cost_pacer import CostPacer
from shopify_pipeline.shopify.errors import BadRequestError, MissingScopeError
from shopify_pipeline.shopify.graphql import GraphQLClient, PartialDataError, QueryTooCostlyError
from shopify_pipeline_tests.support.fake_clock import FakeClock
from shopify_pipeline_tests.support.hostile_server import HostileServer, Respond

SETTINGS = ShopifySettings(allow_local_shops=True, backoff_seconds=0.01, timeout_seconds=5.0)


def _cost(requested, actual, available, maximum=2000, restore=100):
    return {"cost": {"requestedQueryCost": requested, "actualQueryCost": actual,
                     "throttleStatus": {"maximumAvailable": maximum, "currentlyAvailable": available,
                                        "restoreRate": restore}}}


def _answer(document: dict, version: str = "2025-10") -> Respond:
    return Respond(200, json.dumps(document).encode(), {"Content-Type": "application/json",
                                                       "X-Shopify-API-Version": version})


@pytest.fixture
def server():
    with HostileServer() as running:
        yield running


def _client(server, clock=None):
    clock = clock or FakeClock()
    client = ShopifyClient(f"{server.url}/shops/s", "shpat_graphql", SETTINGS)
    return GraphQLClient(client, CostPacer(clock=clock, sleep=clock.sleep))


def test_throttled_is_waited_out_without_using_error_retries(server):
    answers = iter([
        _answer({"errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}],
                 "extensions": _cost(500, None, 100)}),
        _answer({"errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}],
                 "extensions": _cost(500, None, 300)}),
        _answer({"data": {"shop": {"name": "s"}}, "extensions": _cost(500, 3, 1997)}),
    ])
    server.script(lambda seen: next(answers))
    clock = FakeClock()
    graphql = _client(server, clock)
    answer = graphql.execute("{ shop { name } }")
    assert answer.data == {"shop": {"name": "s"}} and answer.cost.actual == 3
    # (requested 500 - available) / 100 points a second, learned from each THROTTLED answer's reading
    assert clock.sleeps == [pytest.approx(4.0), pytest.approx(2.0)]
    assert graphql.client.stats.retries == 0 and graphql.client.stats.throttled == 2
    assert [seen.method for seen in server.seen] == ["POST"] * 3
    assert json.loads(server.seen[0].body) == {"query": "{ shop { name } }", "variables": {}}
    assert server.seen[0].header("X-Shopify-Access-Token") == "shpat_graphql"


@pytest.mark.parametrize(("document", "error", "words"), [
    ({"data": {"orders": None}, "errors": [{"message": "Access denied for orders field.",
                                            "extensions": {"code": "ACCESS_DENIED"}}]},
     MissingScopeError, "ACCESS_DENIED"),
    ({"data": {"orders": {"nodes": []}, "customers": None},
      "errors": [{"message": "Internal error", "path": ["customers"]}]}, PartialDataError, "partial data"),
    ({"errors": [{"message": "Query cost is 1502, which exceeds the single query max cost limit (1000).",
                  "extensions": {"code": "MAX_COST_EXCEEDED"}}]}, QueryTooCostlyError, "single-query maximum"),
    ({"errors": [{"message": "Field 'ordrs' doesn't exist on type 'QueryRoot'"}]}, BadRequestError, "ordrs"),
])
def test_errors_inside_a_200_answer_are_typed_and_never_accepted(server, document, error, words):
    server.script(lambda seen: _answer({**document, "extensions": _cost(10, 10, 1990)}))
    with pytest.raises(error, match=words):
        _client(server).execute("{ orders(first: 1) { nodes { id } } }")


def test_a_fallen_forward_api_version_is_logged(server, caplog):
    server.script(lambda seen: _answer({"data": {"shop": {"name": "s"}}, "extensions": _cost(1, 1, 1999)},
                                       version="2026-01"))
    graphql = _client(server)
    with caplog.at_level(logging.WARNING, logger="shopify_pipeline"):
        graphql.execute("{ shop { name } }")
    assert graphql.answered_version == "2026-01"
    assert "fell forward" in caplog.text and "not 2026-10" in caplog.text


def test_connections_are_paged_to_the_end_nested_ones_included(server):
    def rule(seen):
        request = json.loads(seen.body)
        variables = request["variables"]
        if "node(id:" in request["query"]:  # the rest of one product's variants
            after = int(variables["after"])
            nodes = [{"id": f"v{n}"} for n in range(after, min(after + variables["first"], 300))]
            last = after + len(nodes)
            return _answer({"data": {"node": {"variants": {
                "nodes": nodes, "pageInfo": {"hasNextPage": last < 300, "endCursor": str(last)}}}},
                "extensions": _cost(252, 100, 1900)})
        page = 0 if variables["after"] is None else int(variables["after"])
        products = [{"id": f"p{page * 2 + i}", "variants": {
            "nodes": [{"id": f"v{n}"} for n in range(100)],
            "pageInfo": {"hasNextPage": True, "endCursor": "100"}}} for i in range(2)]
        return _answer({"data": {"products": {"nodes": products, "pageInfo": {
            "hasNextPage": page < 2, "endCursor": str(page + 1)}}}, "extensions": _cost(210, 50, 1900)})

    server.script(rule)
    graphql = _client(server)
    pages = list(graphql.connection_pages("query($first: Int!, $after: String) { products }", "products", first=2))
    assert len(pages) == 3
    nodes = [node for page_nodes, _ in pages for node in page_nodes]
    node_query = "query($id: ID!, $first: Int!, $after: String) { node(id: $id) }"
    extra = graphql.complete_nested(nodes, "variants", node_query)
    assert extra == len(nodes) * 1  # 100 + 250 ≥ 300: one more query per product
    assert all(len(node["variants"]["nodes"]) == 300 for node in nodes)
    assert all(len({v["id"] for v in node["variants"]["nodes"]}) == 300 for node in nodes)


def test_a_connection_cursor_that_repeats_is_an_error(server):
    server.script(lambda seen: _answer({"data": {"orders": {"nodes": [{"id": "1"}], "pageInfo": {
        "hasNextPage": True, "endCursor": "same"}}}, "extensions": _cost(5, 5, 1995)}))
    with pytest.raises(Exception, match="cursor loop"):
        list(_client(server).connection_pages("query { orders }", "orders", first=1))


def test_answers_without_a_cost_reading_never_stall_the_queries_after_them(server):
    server.script(lambda seen: _answer({"data": {"shop": {"name": "s"}}}))  # no extensions at all
    clock = FakeClock()
    graphql = _client(server, clock)
    for _ in range(6):  # each reserves the single-query maximum (1000 of 2000 points) before it is sent
        graphql.execute("{ shop { name } }")
    assert clock.sleeps == []


def test_a_new_page_size_waits_for_its_expected_cost_not_the_single_query_maximum(server):
    def page(seen):
        first = json.loads(seen.body)["variables"]["first"]
        # 1 point an order plus the connection's 2; the bucket holds 300 points after each answer.
        return _answer({"data": {"orders": {"nodes": [{"id": f"gid://shopify/Order/{i}"} for i in range(first)],
                                            "pageInfo": {"hasNextPage": True, "endCursor": f"c{len(server.seen)}"}}},
                        "extensions": _cost(2 + first, 2 + first, 300)})

    server.script(page)
    clock = FakeClock()
    graphql = _client(server, clock)
    query = "query($first: Int!, $after: String) { orders(first: $first, after: $after) { nodes { id } } }"
    graphql.connection_page(query, "orders")  # the 10-order probe: one order costs 1 point
    nodes, _ = graphql.connection_page(query, "orders", after="c1")
    assert len(nodes) == 250
    assert clock.sleeps == []  # 252 points were there; the single-query maximum (1000) was not waited for
