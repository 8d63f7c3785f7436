"""Shopify webhooks: one handler (verify, dedupe, apply) with doors for HTTPS and EventBridge (issue #15)."""
