"""Which fault, if any, a request gets: deterministic rules first, then seeded random draws."""

from __future__ import annotations

import random
import threading

from shopify_pipeline.simulator.config import FaultConfig

# Bodies Shopify's edge sends as HTML rather than JSON (observed for 430, 502, 503, 504).
HTML_BODIES = {
    430: "<!DOCTYPE html><html><head><title>Request blocked</title></head><body><h1>430</h1>"
         "<p>Your request was rejected for security reasons.</p></body></html>",
    502: "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>"
         "<h1>502 Bad Gateway</h1></body></html>",
    503: "<!DOCTYPE html><html><head><title>Service Unavailable</title></head><body>"
         "<h1>Our servers are a bit busy</h1><p>Please try again in a moment.</p></body></html>",
    504: "<!DOCTYPE html><html><head><title>504 Gateway Time-out</title></head><body>"
         "<h1>504 Gateway Time-out</h1><p>The server didn't respond in time.</p></body></html>",
}


class FaultPlan:
    """A shop's current FaultConfig plus the counters its rules and random draws depend on."""

    def __init__(self, config: FaultConfig) -> None:
        self._lock = threading.Lock()
        self.set(config)

    def set(self, config: FaultConfig) -> None:
        """Switch to `config`, restarting rule counters and the random sequence (so runs repeat)."""
        with self._lock:
            self.config = config
            self._matches = [0] * len(config.rules)
            self._draws = 0

    def choose(self, endpoint: str, page: int, limit: int, aliases: tuple[str, ...] = ()) -> str | None:
        """The fault kind for this request ("500", "hang", "truncate", …) or None to answer normally.

        A rule's endpoint matches `endpoint` or one of `aliases` (a GraphQL request is "graphql" and
        "graphql:<root field>" for each root field it asks for).
        Rules are checked in order; the first whose endpoint and page match and whose window
        (skip, then `times` failures, consecutive or every `every`-th) covers this match wins.
        Otherwise one seeded draw decides.
        """
        with self._lock:
            config = self.config
            for position, rule in enumerate(config.rules):
                if rule.endpoint is not None and rule.endpoint != endpoint and rule.endpoint not in aliases:
                    continue
                if rule.page is not None and rule.page != page:
                    continue
                self._matches[position] += 1
                seen = self._matches[position] - rule.skip
                if rule.every > 0:  # the every-th, 2·every-th … match after skip fails
                    failures = seen // rule.every
                    if seen > 0 and seen % rule.every == 0 and (rule.times <= 0 or failures <= rule.times):
                        return rule.kind
                elif seen > 0 and (rule.times <= 0 or seen <= rule.times):
                    return rule.kind
            self._draws += 1
            draw = self._draws
        # One generator per request number: the n-th request gets the same fate on every run.
        rng = random.Random(config.seed * 1_000_003 + draw)
        chances = (
            ("reset", config.reset_rate),
            ("hang", config.hang_rate),
            ("500", config.error_500_rate * min(limit, 250) / 250),
            ("502", config.error_502_rate),
            ("503", config.error_503_rate),
            ("504", config.error_504_rate),
            ("430", config.error_430_rate),
            ("truncate", config.truncate_rate),
            ("malformed", config.malformed_rate),
        )
        roll = rng.random()
        for kind, chance in chances:
            if roll < chance:
                return kind
            roll -= chance
        return None
