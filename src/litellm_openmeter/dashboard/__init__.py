"""The usage dashboard: one page, drawn in the browser from OpenMeter's own API."""

from .page import PUBLIC_PREFIXES, page_routes

__all__ = ["PUBLIC_PREFIXES", "page_routes"]
