"""A local Shopify Admin API server for demos, tests and benchmarks. Imports nothing else of the package.

    with Simulator([ShopConfig("acme", "shpat_acme", orders=1000)], time_scale=10) as sim:
        requests.get(f"{sim.shop_url('acme')}/admin/api/2026-10/orders.json",
                     headers={"X-Shopify-Access-Token": "shpat_acme"})
"""

from shopify_pipeline.simulator.config import (
    ALL_SCOPES,
    PLANS,
    AuthConfig,
    AuthFaults,
    BulkConfig,
    BulkFaults,
    FaultConfig,
    FaultRule,
    ShopConfig,
    WebhookConfig,
    WebhookFaults,
)
from shopify_pipeline.simulator.server import Simulator

__all__ = ["ALL_SCOPES", "PLANS", "AuthConfig", "AuthFaults", "BulkConfig", "BulkFaults", "FaultConfig", "FaultRule",
           "ShopConfig", "Simulator", "WebhookConfig", "WebhookFaults"]
