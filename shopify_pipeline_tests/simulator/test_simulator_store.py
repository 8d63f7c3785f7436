"""Sorted views stay correct under mutation without being rebuilt."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shopify_pipeline.simulator.data import Renderer, generate
from shopify_pipeline.simulator.store import RenderCache, ShopData

actions = st.lists(st.tuples(st.sampled_from(["update", "create", "delete"]), st.integers(1, 5),
                             st.integers(0, 1000)), max_size=15)


@settings(max_examples=30, deadline=None)
@given(actions)
def test_views_match_a_full_sort_after_mutations(steps):
    records = generate("orders", 60, seed=1, anchor=1_700_000_000, history_days=10)
    data = ShopData(Renderer("s", 1, -300, 0, 0), {"orders": records, "products": [], "customers": []},
                    seed=1, large_every=0, large_size=300, cache=RenderCache())
    collection = data.collections["orders"]
    for field in ("id", "created_at", "updated_at"):
        collection.view(field)
    for action, n, seed in steps:
        getattr(data, action)("orders", n, seed)
    for field, attribute in (("id", "id"), ("created_at", "created"), ("updated_at", "updated")):
        keys, items = collection.view(field)
        expected = sorted(collection.items, key=lambda r, a=attribute: (getattr(r, a), r.id))
        assert items == expected
        assert keys == [(getattr(r, attribute), r.id) for r in expected]
