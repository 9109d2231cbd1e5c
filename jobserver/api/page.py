"""The web page at `/` and its static files under `/static/`, from the package.

Rules: only files shipped in `jobserver/static` are served, looked up by a
plain name from a fixed set of suffixes (no paths, no directory listing); no
asset comes from anywhere else, so the page works offline and without a build
step. Every response carries `PAGE_CSP`: scripts and styles only from this
origin (no inline script, no eval), connections only to this origin, and the
page may not be framed. The page reads its token from the URL's fragment,
which never reaches the server, and keeps it in the tab's sessionStorage.
The one thing filled in is the sign-in hint's command line (no secret in it).
"""

from __future__ import annotations

import html
import re
from importlib import resources

from quart import Blueprint, Response

from ..auth import token_command_line
from ..errors import NotFound
from .common import services

page = Blueprint("page", __name__)

PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
CONTENT_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                 ".html": "text/html; charset=utf-8", ".svg": "image/svg+xml"}
# The hint in index.html that the server's own command replaces.
MAKE_TOKEN_HINT = "jobserver token --sub NAME --data-dir DIR"
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,40}(\.[a-z]{2,4})$")


def _static(name: str) -> Response:
    match = _NAME.match(name)
    if match is None or match.group(1) not in CONTENT_TYPES:
        raise NotFound("no such file", code="not_found")
    entry = resources.files("jobserver").joinpath("static", name)
    if not entry.is_file():
        raise NotFound("no such file", code="not_found")
    response = Response(entry.read_bytes(), content_type=CONTENT_TYPES[match.group(1)])
    response.headers["Content-Security-Policy"] = PAGE_CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-cache"
    return response


@page.get("/")
async def index() -> Response:
    """The page, its sign-in hint showing the command the server printed at start."""
    response = _static("index.html")
    command = html.escape(token_command_line(services().config.data_dir))
    body = (await response.get_data(as_text=True)).replace(MAKE_TOKEN_HINT, command, 1)
    response.set_data(body)
    return response


@page.get("/static/<name>")
async def static_file(name: str) -> Response:
    return _static(name)
