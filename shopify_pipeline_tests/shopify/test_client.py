"""The Shopify client against the simulator, a real HTTP server: paging, retries, pacing, errors."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shopify_pipeline.exact_json import parse_json
from shopify_pipeline.settings import ShopifySettings
from shopify_pipeline.shopify.client import ShopifyClient, ShopifyRetry, shop_base_url
from shopify_pipeline.shopify.errors import (
    InvalidTokenError,
    MissingScopeError,
    ShopFrozenError,
    ShopifyPermanentError,
    ShopLockedError,
    ShopNotFoundError,
    UnsafeUrlError,
)
from shopify_pipeline.shopify.pacer import FixedGapPacer, Pacer
from shopify_pipeline.simulator import FaultConfig, FaultRule, ShopConfig, Simulator

FAST = ShopifySettings(allow_local_shops=True, backoff_seconds=0.01, timeout_seconds=2.0)


@pytest.fixture(scope="module")
def sim():
    shops = [
        ShopConfig("acme", "shpat_acme", orders=600, products=30, customers=40, seed=3, plan="unlimited"),
        ShopConfig("paced", "shpat_paced", orders=2000, seed=4, plan="standard"),
        ShopConfig("frozen", "shpat_frozen", orders=5, state="frozen"),
        ShopConfig("locked", "shpat_locked", orders=5, state="locked"),
        ShopConfig("noscope", "shpat_noscope", orders=5, scopes=("read_products",)),
        ShopConfig("recent", "shpat_recent", orders=50, scopes=("read_orders",), history_days=200),
    ]
    with Simulator(shops, time_scale=10) as running:
        yield running


@pytest.fixture
def acme(sim):
    sim.set_faults("acme", FaultConfig())
    return ShopifyClient(sim.shop_url("acme"), "shpat_acme", FAST, pacer=Pacer(leak_per_second=1000))


def _truth_ids(sim, shop, data_type="orders"):
    return {record["id"] for record in sim.records(shop, data_type)}


def test_pages_through_every_order_including_closed_and_cancelled(sim, acme):
    pages = list(acme.pages("orders"))
    ids = [order["id"] for page in pages for order in page.records]
    assert len(pages) == 3 and len(ids) == len(set(ids)) == 600
    assert set(ids) == _truth_ids(sim, "acme")
    assert {o["financial_status"] for p in pages for o in p.records} and max(ids) > 2**53
    assert {o.get("cancelled_at") is not None for p in pages for o in p.records} == {True, False}
    assert "status=any" in pages[0].url and "page_info" in pages[1].url and pages[-1].next_url is None


def test_decimals_stay_exact(sim, acme):
    page = next(acme.pages("orders"))
    raw = parse_json(page.body)["orders"]
    assert page.records == raw
    rates = [t["rate"] for o in page.records for t in o.get("tax_lines", [])]
    assert rates and all(type(r).__name__ == "Decimal" for r in rates)


def test_timeouts_then_success(sim, acme):
    sim.set_faults("acme", FaultConfig(hang_seconds=3, rules=(FaultRule("hang", endpoint="orders", page=1, times=2),)))
    page = acme.fetch_page("orders", acme.first_page_url("orders"))
    assert len(page.records) == 250 and acme.stats.retries == 2


def test_a_429_with_retry_after_is_waited_out(sim, acme):
    sim.set_faults("acme", FaultConfig(rules=(FaultRule("429", endpoint="orders", times=2),)))
    waits = []
    acme._sleep = waits.append
    page = acme.fetch_page("orders", acme.first_page_url("orders"))
    assert len(page.records) == 250 and acme.stats.throttled == 2
    assert waits and all(w > 0 for w in waits)


def test_retry_after_is_read_as_a_decimal():
    assert ShopifyRetry().parse_retry_after("2.0") == 2.0
    assert ShopifyRetry().parse_retry_after("0.25") == 0.25


def test_500s_on_a_big_page_halve_the_limit(sim, acme):
    sim.set_faults("acme", FaultConfig(rules=(FaultRule("500", endpoint="orders", times=4),)))
    page = acme.fetch_page("orders", acme.first_page_url("orders"))
    assert page.limit == 125 and len(page.records) == 125 and acme.stats.page_shrinks == 1


def test_html_5xx_resets_and_malformed_json_are_retried(sim, acme):
    rules = (FaultRule("503", endpoint="orders", times=1), FaultRule("reset", endpoint="orders", page=2, times=1),
             FaultRule("malformed", endpoint="orders", page=3, times=1))
    sim.set_faults("acme", FaultConfig(rules=rules))
    assert sum(len(p.records) for p in acme.pages("orders")) == 600


@pytest.mark.parametrize("shop,token,error", [
    ("acme", "shpat_wrong", InvalidTokenError),
    ("frozen", "shpat_frozen", ShopFrozenError),
    ("locked", "shpat_locked", ShopLockedError),
    ("noscope", "shpat_noscope", MissingScopeError),
])
def test_permanent_errors_are_typed_not_retried_and_never_show_the_token(sim, shop, token, error):
    client = ShopifyClient(sim.shop_url(shop), token, FAST, pacer=Pacer(leak_per_second=1000))
    with pytest.raises(error) as raised:
        next(client.pages("orders"))
    assert client.stats.retries == 0 and token not in str(raised.value) and token not in repr(client)
    assert isinstance(raised.value, ShopifyPermanentError)
    if error is MissingScopeError:
        assert "read_orders" in str(raised.value)


def test_unknown_shop_is_404(sim):
    client = ShopifyClient(sim.shop_url("acme").replace("/acme", "/nobody"), "x", FAST)
    with pytest.raises(ShopNotFoundError, match="check the shop domain"):
        client.count("orders")


def test_scopes_and_count(sim, acme):
    assert "read_all_orders" in acme.granted_scopes()
    assert acme.count("orders") == 600
    recent = ShopifyClient(sim.shop_url("recent"), "shpat_recent", FAST)
    assert "read_all_orders" not in recent.granted_scopes()


@pytest.mark.parametrize("shop", ["evil.com", "https://evil.com", "acme.myshopify.com.evil.com", "a b",
                                  "http://acme.myshopify.com"])
def test_shop_domains_must_be_myshopify(shop):
    with pytest.raises(UnsafeUrlError):
        shop_base_url(shop)


def test_local_urls_need_an_explicit_opt_in(sim):
    assert shop_base_url("acme") == "https://acme.myshopify.com"
    with pytest.raises(UnsafeUrlError, match="SHOPIFY_ALLOW_LOCAL_SHOPS"):
        ShopifyClient(sim.shop_url("acme"), "shpat_acme")


def test_a_next_link_to_another_host_is_refused():
    class Evil(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = b'{"orders": [{"id": 1}]}'
            self.send_response(200)
            self.send_header("Link", '<http://127.0.0.2:9/steal?page_info=x>; rel="next"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Evil)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = ShopifyClient(f"http://127.0.0.1:{server.server_address[1]}/shops/x", "secret-token", FAST)
        with pytest.raises(UnsafeUrlError, match="not this shop") as raised:
            next(client.pages("orders"))
        assert "secret-token" not in str(raised.value)
    finally:
        server.shutdown()


def test_the_shared_pacer_keeps_a_fast_sync_out_of_429s(sim):
    # Standard plan at time scale 10: bucket 40, leaking 20/s. Start the pacer at the unscaled 2/s: it
    # must learn the faster leak from the call-limit header, and never overflow the bucket.
    client = ShopifyClient(sim.shop_url("paced"), "shpat_paced", ShopifySettings(allow_local_shops=True,
                           page_size=25), pacer=Pacer(leak_per_second=2.0))
    pages = list(client.pages("orders"))
    assert sum(len(p.records) for p in pages) == 2000
    assert client.stats.throttled == 0 and sim.stats("paced")["throttled"] == 0
    assert client.pacer.leak_per_second > 10


def test_pacer_waits_when_the_bucket_is_full():
    now = [0.0]
    sleeps = []

    def sleep(seconds):
        sleeps.append(seconds)
        now[0] += seconds

    pacer = Pacer(leak_per_second=2.0, size=40, margin=2, clock=lambda: now[0], sleep=sleep)
    for _ in range(38):
        assert pacer.acquire() == 0
    assert pacer.acquire() == pytest.approx(0.5)
    pacer.observe("40/40")
    assert pacer.acquire() == pytest.approx(1.5)


def test_fixed_gap_pacing_spaces_requests_like_the_seed():
    now = [0.0]

    def sleep(seconds):
        now[0] += seconds

    pacer = FixedGapPacer(30.0, clock=lambda: now[0], sleep=sleep)
    waits = [pacer.acquire() for _ in range(3)]
    assert waits == [0.0, 30.0, 30.0] and now[0] == 60.0
