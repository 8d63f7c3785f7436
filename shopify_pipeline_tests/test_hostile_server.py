"""The hostile test server does what each action promises, seen from plain requests / http.client / sockets."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import zlib
from collections.abc import Iterator

import pytest
import requests

from shopify_pipeline.simulator import ShopConfig, Simulator
from shopify_pipeline_tests.support.hostile_server import (
    Drop,
    Hold,
    HostileServer,
    Huge,
    Proxy,
    Redirect,
    Respond,
    Seen,
    Trickle,
    chain,
    huge_body_pieces,
    rule_for,
)

TOKEN = "shpat_acme"
ORDERS = "/shops/acme/admin/api/2026-10/orders.json?limit=50&status=any"
AUTH = {"X-Shopify-Access-Token": TOKEN}
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with Simulator([ShopConfig("acme", TOKEN, orders=300)], time_scale=10) as simulator:
        yield simulator


@pytest.fixture
def server(sim: Simulator) -> Iterator[HostileServer]:
    with HostileServer(upstream=sim.base_url) as hostile:
        yield hostile
    assert hostile.errors == []


def _raw_get(url: str, path: str) -> socket.socket:
    """A socket that has sent one GET and not read anything yet."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return sock


def _read_all(sock: socket.socket) -> list[bytes]:
    """Every recv() until the server closes, one list item per read."""
    reads = []
    while data := sock.recv(65536):
        reads.append(data)
    sock.close()
    return reads


# -- proxying --------------------------------------------------------------------------------------


def test_proxy_rewrites_next_links_so_paging_stays_on_the_hostile_server(sim: Simulator,
                                                                         server: HostileServer) -> None:
    session = requests.Session()
    url = f"{server.url}{ORDERS}"
    ids: list[int] = []
    for _ in range(4):  # the first page and three next links
        response = session.get(url, headers=AUTH, timeout=5)
        assert response.status_code == 200
        ids += [order["id"] for order in response.json()["orders"]]
        url = response.links["next"]["url"]
        assert url.startswith(f"{server.url}/shops/acme/admin/api/2026-10/orders.json?")
        assert sim.base_url not in response.headers["Link"]
    assert len(ids) == len(set(ids)) == 200
    assert [seen.number for seen in server.seen] == [1, 2, 3, 4]
    assert all(seen.path.startswith("/shops/acme/admin/api/2026-10/orders.json?") for seen in server.seen)
    assert "page_info=" in server.seen[3].path
    assert server.requests_to("page_info=") == server.seen[1:]
    assert sim.stats("acme")["requests"]["orders"] >= 4


def test_proxy_keeps_the_connection_alive(server: HostileServer) -> None:
    connection = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=5)
    connection.request("GET", ORDERS, headers=AUTH)
    first = connection.getresponse()
    first.read()
    sock = connection.sock
    connection.request("GET", ORDERS, headers=AUTH)
    second = connection.getresponse()
    second.read()
    assert (first.status, second.status) == (200, 200)
    assert connection.sock is sock  # not reconnected
    connection.close()


def test_without_an_upstream_the_default_is_a_json_404() -> None:
    with HostileServer() as server:
        response = requests.get(f"{server.url}/anything", timeout=5)
    assert response.status_code == 404
    assert response.json() == {"errors": "Not Found"}


def test_seen_records_method_path_headers_body_and_number() -> None:
    with HostileServer() as server:
        server.script(lambda seen: Respond(201, b"{}"))
        requests.get(f"{server.url}/a?x=1&y=%20", headers={"X-Shopify-Access-Token": "secret"}, timeout=5)
        requests.post(f"{server.url}/b", data=b"payload", headers={"x-lower-case": "v"}, timeout=5)
    first, second = server.seen
    assert (first.method, first.path, first.number) == ("GET", "/a?x=1&y=%20", 1)
    assert first.headers["X-Shopify-Access-Token"] == "secret"  # case as sent
    assert first.header("x-shopify-access-token") == "secret"
    assert (second.method, second.path, second.number, second.body) == ("POST", "/b", 2, b"payload")
    assert "x-lower-case" in second.headers


# -- answers ---------------------------------------------------------------------------------------


def test_respond_sends_exactly_that_answer(server: HostileServer) -> None:
    server.script(rule_for("orders.json", Respond(429, b'{"errors":"slow down"}', {"Retry-After": "2.0"})))
    throttled = requests.get(f"{server.url}{ORDERS}", headers=AUTH, timeout=5)
    normal = requests.get(f"{server.url}{ORDERS}", headers=AUTH, timeout=5)
    assert (throttled.status_code, throttled.content) == (429, b'{"errors":"slow down"}')
    assert throttled.headers["Retry-After"] == "2.0"
    assert throttled.headers["Content-Length"] == "22"
    assert normal.status_code == 200  # times=1: the next one is proxied


def test_redirect_to_another_host(server: HostileServer) -> None:
    with HostileServer(host="127.0.0.2") as other:
        other.script(lambda seen: Respond(200, b'{"orders":[]}'))
        assert other.url.startswith("http://127.0.0.2:")
        server.script(rule_for("orders.json", Redirect(f"{other.url}/stolen"), times=2))
        not_followed = requests.get(f"{server.url}{ORDERS}", headers=AUTH, timeout=5, allow_redirects=False)
        followed = requests.get(f"{server.url}{ORDERS}", headers=AUTH, timeout=5)
        proxied = requests.get(f"{server.url}{ORDERS}", headers=AUTH, timeout=5)
    assert not_followed.status_code == 302
    assert not_followed.headers["Location"] == f"{other.url}/stolen"
    assert followed.status_code == 200 and followed.json() == {"orders": []}
    assert followed.url == f"{other.url}/stolen"
    assert [seen.path for seen in other.seen] == ["/stolen"]
    assert proxied.status_code == 200 and len(proxied.json()["orders"]) == 50  # times=2 used up


def test_proxy_overrides_and_drops_upstream_headers(server: HostileServer) -> None:
    fake_link = '<http://127.0.0.2:9/evil?page_info=x>; rel="next"'
    server.script(lambda seen: Proxy(headers={"x-shopify-shop-api-call-limit": "1000000000/40", "Link": fake_link},
                                     drop_headers=("X-Shopify-API-Version",)))
    response = requests.get(f"{server.url}{ORDERS}", headers=AUTH, timeout=5)
    assert response.status_code == 200 and len(response.json()["orders"]) == 50
    assert response.headers["X-Shopify-Shop-Api-Call-Limit"] == "1000000000/40"
    assert response.raw.headers.getlist("X-Shopify-Shop-Api-Call-Limit") == ["1000000000/40"]  # replaced
    assert response.headers["Link"] == fake_link  # not rewritten
    assert "X-Shopify-API-Version" not in response.headers


# -- slow, big and broken answers ------------------------------------------------------------------


def test_trickle_sends_the_head_at_once_then_one_chunk_per_interval(server: HostileServer) -> None:
    body = b'{"orders":[1,2,3]}'
    server.script(lambda seen: Trickle(body=body, interval=0.05, chunk=3))
    sock = _raw_get(server.url, "/slow")
    started = time.monotonic()
    first = sock.recv(65536)
    head_wait = time.monotonic() - started
    reads = [first, *_read_all(sock)]
    elapsed = time.monotonic() - started
    head, _, received = b"".join(reads).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert f"Content-Length: {len(body)}".encode() in head
    assert received == body  # in order, complete
    # Six pieces of three bytes, each after an interval: the body cannot be done before 6 intervals.
    # (Lower bounds only, and a loose read count: a busy machine may merge pieces, never split the wait.)
    assert elapsed >= 6 * 0.05 * 0.9
    assert head_wait < elapsed / 2
    assert len(reads) >= 4


def test_trickle_can_drip_the_head_too_and_send_chunked(server: HostileServer) -> None:
    server.script(lambda seen: Trickle(body=b"abcdef", interval=0.01, chunk=4, content_length=False,
                                       trickle_headers=True, headers={"X-Custom": "yes"}))
    started = time.monotonic()
    reads = _read_all(_raw_get(server.url, "/slow"))
    head, _, received = b"".join(reads).partition(b"\r\n\r\n")
    # The head (~100 bytes) came four bytes per interval, so in many reads and not at once.
    assert time.monotonic() - started >= (len(head) // 4) * 0.01 * 0.9
    assert len(reads) > 5 and len(reads[0]) <= 4
    assert b"Transfer-Encoding: chunked" in head and b"X-Custom: yes" in head
    assert received == b"4\r\nabcd\r\n2\r\nef\r\n0\r\n\r\n"
    # and a real client puts it back together
    server.script(lambda seen: Trickle(body=b"abcdef", interval=0.005, chunk=1, content_length=False))
    assert requests.get(f"{server.url}/slow", timeout=5).content == b"abcdef"


def test_trickle_stops_quietly_when_the_client_hangs_up(server: HostileServer) -> None:
    server.script(rule_for("/slow", Trickle(body=b"x" * 1000, interval=0.01)))
    sock = _raw_get(server.url, "/slow")
    sock.recv(100)
    sock.close()
    deadline = time.monotonic() + 5
    # The server's next writes hit a closed socket and its thread ends; the fixture checks nothing was raised.
    while server.open_connections and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.open_connections == 0
    assert requests.get(f"{server.url}{ORDERS}", headers=AUTH, timeout=5).status_code == 200


def test_stop_cuts_a_trickle_short() -> None:
    server = HostileServer().start()
    server.script(lambda seen: Trickle(body=b"x" * 1000, interval=1.0))
    sock = _raw_get(server.url, "/slow")
    sock.recv(1000)  # the head
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 2
    assert _read_all(sock) == []


@pytest.mark.parametrize("content_length", [True, False])
def test_huge_streams_exactly_size_bytes(server: HostileServer, content_length: bool) -> None:
    size = 48 * MiB + 17
    server.script(lambda seen: Huge(size, content_length=content_length))
    with requests.get(f"{server.url}{ORDERS}", headers=AUTH, timeout=5, stream=True) as response:
        if content_length:
            assert response.headers["Content-Length"] == str(size)
        else:
            assert response.headers["Transfer-Encoding"] == "chunked"
            assert "Content-Length" not in response.headers
        total, first, last = 0, b"", b""
        for piece in response.iter_content(MiB):
            first = first or piece
            total += len(piece)
            last = piece
    assert total == size
    assert first.startswith(b'{"orders":[{"id":') and last.endswith(b"]}")


def test_huge_gzip_is_a_compression_bomb(server: HostileServer) -> None:
    size = 64 * MiB
    server.script(lambda seen: Huge(size, gzip=True))
    with requests.get(f"{server.url}{ORDERS}", headers=AUTH, timeout=5, stream=True) as response:
        assert response.headers["Content-Encoding"] == "gzip"
        on_the_wire = int(response.headers["Content-Length"])
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # checks the gzip CRC and length at the end
        inflated = 0
        while piece := response.raw.read(64 * 1024, decode_content=False):
            inflated += len(inflater.decompress(piece))
        inflated += len(inflater.flush())
    assert inflater.eof and inflated == size
    assert on_the_wire < size // 100
    server.script(lambda seen: Huge(size, gzip=True, content_length=False))
    with requests.get(f"{server.url}{ORDERS}", headers=AUTH, timeout=5, stream=True) as response:
        assert sum(len(piece) for piece in response.iter_content(MiB)) == size  # requests inflates it


@pytest.mark.parametrize("size", [13, 14, 100, 150, 1000, 2 * MiB + 3])
def test_huge_bodies_are_valid_json_of_the_exact_size(size: int) -> None:
    body = b"".join(huge_body_pieces(size))
    assert len(body) == size
    assert isinstance(json.loads(body)["orders"], list)
    assert max(len(piece) for piece in huge_body_pieces(size)) <= MiB
    with pytest.raises(ValueError):
        Huge(12)


def test_drop_closes_without_an_answer(server: HostileServer) -> None:
    server.script(rule_for("orders.json", Drop(), times=2))
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.url}{ORDERS}", headers=AUTH, timeout=5)
    assert _read_all(_raw_get(server.url, ORDERS)) == []
    assert len(server.seen) == 2
    server.script(lambda seen: Drop(reset=True))
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.url}{ORDERS}", headers=AUTH, timeout=5)


# -- holding ---------------------------------------------------------------------------------------


def test_hold_proxies_after_release_so_the_answer_reflects_the_upstream_then(sim: Simulator,
                                                                             server: HostileServer) -> None:
    count = "/shops/acme/admin/api/2026-10/orders/count.json?status=any"
    before = requests.get(f"{server.url}{count}", headers=AUTH, timeout=5).json()["count"]
    hold = Hold(threading.Event())
    server.script(rule_for("count.json", hold))
    answers: list[requests.Response] = []
    waiter = threading.Thread(target=lambda: answers.append(
        requests.get(f"{server.url}{count}", headers=AUTH, timeout=10)))
    waiter.start()
    assert hold.arrived.wait(5)
    sim.create_records("acme", "orders", n=3)
    assert not answers  # still held
    hold.release.set()
    waiter.join(5)
    assert answers[0].json()["count"] == before + 3


def test_hold_then_applies_another_action_and_gives_up_after_its_timeout(server: HostileServer) -> None:
    server.script(lambda seen: Hold(threading.Event(), then=Respond(418, b"late"), timeout=0.05))
    response = requests.get(f"{server.url}/x", timeout=5)
    assert (response.status_code, response.content) == (418, b"late")


def test_stop_releases_a_hold() -> None:
    server = HostileServer().start()
    hold = Hold(threading.Event())
    server.script(lambda seen: hold)
    sock = _raw_get(server.url, "/held")
    assert hold.arrived.wait(5)
    started = time.monotonic()
    server.stop()
    assert _read_all(sock) == []
    assert time.monotonic() - started < 2


# -- rules -----------------------------------------------------------------------------------------


def test_rule_for_counts_across_threads_and_chain_takes_the_first_match() -> None:
    with HostileServer() as server:
        server.script(chain(rule_for("/a", Respond(201), times=5), rule_for("/", Respond(202), times=None)))
        statuses: list[int] = []
        threads = [threading.Thread(target=lambda: statuses.append(requests.get(f"{server.url}/a", timeout=5)
                                                                    .status_code)) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(5)
        assert sorted(statuses) == [201] * 5 + [202] * 15
        server.script(None)  # back to the default
        assert requests.get(f"{server.url}/a", timeout=5).status_code == 404


def test_a_broken_rule_answers_500_and_is_recorded() -> None:
    def broken(seen: Seen) -> None:
        raise RuntimeError("oops")

    with HostileServer() as server:
        server.script(broken)
        response = requests.get(f"{server.url}/a", timeout=5)
    assert response.status_code == 500 and "oops" in response.text
    assert [str(error) for error in server.errors] == ["oops"]
