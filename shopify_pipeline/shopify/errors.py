"""What can go wrong talking to Shopify, as types, each saying what to do. Never holds a token."""

from __future__ import annotations

from shopify_pipeline.errors import PermanentError, TransientError


class ShopifyError(Exception):
    """Mixin for every Shopify error: `status` is the HTTP status when there was one."""

    status: int | None = None


class ShopifyTransientError(ShopifyError, TransientError):
    """Shopify or the network failed in a way that may pass (5xx, 429, timeouts, resets, bad JSON)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ShopifyPermanentError(ShopifyError, PermanentError):
    """Retrying cannot help until someone acts; `reason` is a short machine-readable word."""

    reason = "permanent"

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class InvalidTokenError(ShopifyPermanentError):
    reason = "invalid_token"


class ShopFrozenError(ShopifyPermanentError):
    reason = "shop_frozen"


class MissingScopeError(ShopifyPermanentError):
    reason = "missing_scope"


class ShopNotFoundError(ShopifyPermanentError):
    reason = "shop_not_found"


class ShopLockedError(ShopifyPermanentError):
    reason = "shop_locked"


class BadRequestError(ShopifyPermanentError):
    reason = "bad_request"


class InvalidCursorError(BadRequestError):
    """Shopify refused a page_info cursor: restart that slice from its last durable position."""

    reason = "invalid_cursor"


class UnsafeUrlError(ShopifyPermanentError):
    """A shop domain or next link that we refuse to call (not *.myshopify.com, another host)."""

    reason = "unsafe_url"


class RedirectRefusedError(ShopifyPermanentError):
    """The shop answered with a redirect; following it would send the token to another address."""

    reason = "redirect"


class ResponseTooLargeError(ShopifyTransientError):
    """An answer larger than the response size cap; it was not read into memory."""
