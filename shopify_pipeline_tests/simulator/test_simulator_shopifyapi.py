"""Shopify's own Python library (ShopifyAPI, from PyPI) pages through the simulator unchanged."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shopify_pipeline.simulator import ShopConfig, Simulator

shopify = pytest.importorskip("shopify")


@pytest.fixture()
def library_shop() -> Iterator[Simulator]:
    with Simulator([ShopConfig("lib", "shpat_lib", orders=1000, seed=4, plan="plus")]) as simulator:
        # shopify.Session insists on https://{shop}.myshopify.com, so point the resource layer at the
        # simulator directly: ShopifyResource.site takes any base URL, headers carry the token.
        shopify.ShopifyResource.site = f"{simulator.shop_url('lib')}/admin/api/2025-10"
        shopify.ShopifyResource.headers["X-Shopify-Access-Token"] = "shpat_lib"
        try:
            yield simulator
        finally:
            shopify.ShopifyResource.clear_session()


def test_shopifyapi_pages_through_1000_orders(library_shop: Simulator):
    # fields= keeps the library's object building (about 30 ms per full order) out of the test time;
    # the paging itself (page_info, Link) is the same as for whole documents.
    page = shopify.Order.find(limit=250, status="any", fields="id,updated_at")
    seen = [order.id for order in page]
    pages = 1
    while page.has_next_page():
        page = page.next_page()
        seen += [order.id for order in page]
        pages += 1
    truth = [order["id"] for order in library_shop.records("lib", "orders")]
    assert pages == 4
    assert len(seen) == 1000 and seen == truth


def test_shopifyapi_reads_a_whole_order(library_shop: Simulator):
    truth = library_shop.records("lib", "orders")[10]
    order = shopify.Order.find(truth["id"])
    assert order.id == truth["id"] and order.total_price == truth["total_price"]
    assert order.line_items[0].tax_lines[0].rate == truth["line_items"][0]["tax_lines"][0]["rate"]
    assert shopify.Order.count(status="any") == 1000
