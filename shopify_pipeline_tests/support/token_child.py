"""A process that asks for one user's access token and uses it, for the expiring-token tests:

    python -m shopify_pipeline_tests.support.token_child USER START_AT [KILL_POINT]

It waits until the wall clock reaches START_AT (so several processes ask at the same moment), gets the token
(refreshing it if it is due), asks the shop for its scopes with it, and prints `ok`. With KILL_POINT it
SIGKILLs itself at that point of a refresh instead: `before_refresh` (lock held, Shopify not asked yet),
`after_answer` (Shopify issued a new pair, not stored yet), `after_store` (stored, lock not released).
Configured by the environment, like the CLI (DynamoDB, tables, Secrets Manager endpoint, local shops).
"""

from __future__ import annotations

import os
import signal
import sys
import time

from shopify_pipeline.shopify.auth import OAuthClient
from shopify_pipeline.sync.service import SyncService
from shopify_pipeline.sync.tokens import SecretsManagerVault


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    user, start_at = sys.argv[1], float(sys.argv[2])
    point = sys.argv[3] if len(sys.argv) > 3 else None
    real_refresh, real_save = OAuthClient.refresh, SecretsManagerVault.save
    if point == "before_refresh":
        OAuthClient.refresh = lambda self, token: _die()
    elif point == "after_answer":
        OAuthClient.refresh = lambda self, token: (real_refresh(self, token), _die())[0]
    elif point == "after_store":
        SecretsManagerVault.save = lambda self, pair: (real_save(self, pair), _die())[0]
    engine = SyncService.from_env().engine
    connection = engine.connections.get(user)
    time.sleep(max(0.0, start_at - time.time()))
    source = engine.page_source(connection)
    try:
        source.granted_scopes()
    finally:
        source.close()
    print("ok", flush=True)


if __name__ == "__main__":
    main()
