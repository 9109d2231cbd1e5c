"""The HTTP application (Quart-Trio): native REST API, OpenAPI, metrics, web page."""

from .app import create_app

__all__ = ["create_app"]
