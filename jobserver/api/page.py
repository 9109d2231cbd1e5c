"""The web page at `/`: list your jobs, submit one, watch its log live."""

from __future__ import annotations

from importlib import resources

from quart import Blueprint, Response

page = Blueprint("page", __name__)


@page.get("/")
async def index() -> Response:
    html = resources.files("jobserver").joinpath("static/index.html").read_text("utf-8")
    return Response(html, content_type="text/html; charset=utf-8")
