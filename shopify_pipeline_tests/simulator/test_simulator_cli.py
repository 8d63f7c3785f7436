"""`shopify-pipeline simulator`: shops from flags or a config file; prints URLs; stops on SIGTERM."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from shopify_pipeline.simulator.cli import add_arguments, build_simulator


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_shops_from_flags():
    simulator = build_simulator(parse("--shop", "a:tok_a:12:3:4", "--shop", "b:tok_b", "--time-scale", "5",
                                      "--plan", "plus", "--seed", "9"))
    assert simulator.time_scale == 5
    a = simulator.shops["a"].config
    assert (a.token, a.orders, a.products, a.customers, a.plan, a.seed) == ("tok_a", 12, 3, 4, "plus", 9)
    assert simulator.shops["b"].config.orders == 0


def test_shops_from_a_config_file(tmp_path: Path):
    config = {"time_scale": 3, "shops": [{"name": "c", "token": "t", "orders": 5, "state": "frozen",
                                          "faults": {"error_500_rate": 0.5, "rules": [{"kind": "hang"}]}}]}
    path = tmp_path / "shops.json"
    path.write_text(json.dumps(config))
    simulator = build_simulator(parse("--config", str(path)))
    shop = simulator.shops["c"].config
    assert simulator.time_scale == 3
    assert (shop.state, shop.faults.error_500_rate, shop.faults.rules[0].kind) == ("frozen", 0.5, "hang")


def test_command_serves_until_sigterm():
    command = [sys.executable, "-c", "import sys; from shopify_pipeline.cli import main; sys.exit(main())",
               "simulator", "--shop", "acme:shpat_x:7"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        lines = [process.stdout.readline() for _ in range(3)]
        assert "token shpat_x" in lines[1]
        shop_url = lines[1].split()[1]
        response = requests.get(f"{shop_url}/admin/api/2026-10/orders/count.json?status=any",
                                headers={"X-Shopify-Access-Token": "shpat_x"}, timeout=5)
        assert response.json() == {"count": 7}
    finally:
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        out = process.communicate(timeout=max(1, deadline - time.monotonic()))[0]
    assert process.returncode == 0
    assert "stopped" in out
