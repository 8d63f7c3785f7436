"""A REST bucket tighter than any plan's and a fault every n-th request (issue #16's independent fake)."""

import json

import pytest

from shopify_pipeline.simulator import FaultConfig, FaultRule, ShopConfig, Simulator
from shopify_pipeline_tests.simulator.conftest import ShopClient


def test_the_bucket_and_the_every_nth_rule_come_from_json_and_go_back():
    config = ShopConfig.from_dict({"name": "t", "token": "x", "rest_bucket_size": 3, "rest_leak_per_second": 1.0,
                                   "faults": {"rules": [{"kind": "503", "every": 3, "times": 0}]}})
    assert config.rest_bucket == (3, 1.0)
    assert config.faults.rules == (FaultRule("503", every=3, times=0),)
    assert FaultConfig.from_dict(json.loads(json.dumps(config.faults.to_dict()))) == config.faults
    assert ShopConfig("p", "x", plan="plus", rest_leak_per_second=5.0).rest_bucket == (400, 5.0)
    with pytest.raises(ValueError, match="rest_bucket_size"):
        ShopConfig("t", "x", rest_bucket_size=0)
    with pytest.raises(ValueError, match="rest_leak_per_second"):
        ShopConfig("t", "x", rest_leak_per_second=0.0)
    with pytest.raises(ValueError, match="every"):
        FaultRule("503", every=-1)
    with pytest.raises(TypeError):
        ShopConfig.from_dict({"name": "t", "token": "x", "rest_bucket": 3})


def test_a_3_request_bucket_leaking_1_per_second_and_a_503_every_third_request():
    every_third = FaultConfig(rules=(FaultRule("503", every=3, times=0),))
    tight = ShopConfig("tight", "shpat_t", orders=5, rest_bucket_size=3, rest_leak_per_second=1.0, faults=every_third)
    free = ShopConfig("free", "shpat_f", orders=5, plan="unlimited",
                      faults=FaultConfig(rules=(FaultRule("503", every=3, skip=1, times=2),)))
    with Simulator([tight, free]) as sim:
        client = ShopClient(sim, "tight", "shpat_t")
        answers = [client.get("orders/count.json") for _ in range(4)]  # faster than one a second
        assert [a.status_code for a in answers] == [200, 200, 503, 429]
        assert answers[1].headers["X-Shopify-Shop-Api-Call-Limit"] == "2/3"
        stats = sim.stats("tight")
        assert (stats["bucket_size"], stats["leak_per_second"]) == (3, 1.0)
        # After `skip`, every third request fails, `times` of them.
        statuses = [ShopClient(sim, "free", "shpat_f").get("orders/count.json").status_code for _ in range(9)]
        assert statuses == [200, 200, 200, 503, 200, 200, 503, 200, 200]
