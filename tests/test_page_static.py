"""The page's files as the server sends them: from the package, under a strict CSP."""

from __future__ import annotations

import re
from importlib import resources

from jobserver.api.page import PAGE_CSP

from .conftest import Harness

# What index.html and the modules load: each must be served, and only from here.
IMPORT = re.compile(r'(?:from|import)\s+"\./([a-z]+\.js)"|src="/static/([a-z]+\.js)"|'
                    r'href="/static/([a-z]+\.css)"')


def _static_names() -> set[str]:
    folder = resources.files("jobserver").joinpath("static")
    found = set()
    for entry in folder.iterdir():
        for match in IMPORT.finditer(entry.read_text("utf-8")):
            found.add(next(name for name in match.groups() if name))
    return found


async def test_the_page_and_every_file_it_loads_are_served_with_the_csp(
        harness: Harness) -> None:
    page = await harness.client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == PAGE_CSP
    assert "script-src 'self';" in PAGE_CSP and "unsafe" not in PAGE_CSP
    names = _static_names()
    assert {"app.js", "app.css", "session.js", "log.js", "ansi.js"} <= names
    for name in sorted(names):
        r = await harness.client.get(f"/static/{name}")
        assert r.status_code == 200, name
        kind = "text/css" if name.endswith(".css") else "text/javascript"
        assert r.headers["content-type"].startswith(kind), name
        assert r.headers["content-security-policy"] == PAGE_CSP
        assert r.headers["x-content-type-options"] == "nosniff"
        # Nothing from another origin, nothing evaluated from text.
        assert "http://" not in r.text and "https://" not in r.text, name
        assert not re.search(r"\.(innerHTML|outerHTML)\s*=|\beval\(|new Function", r.text), name


async def test_the_page_names_its_icon_and_it_is_served(harness: Harness) -> None:
    page = await harness.client.get("/")
    found = re.search(r'<link rel="icon" href="(/static/[a-z]+\.svg)"', page.text)
    assert found is not None
    r = await harness.client.get(found.group(1))
    assert r.status_code == 200 and r.headers["content-type"] == "image/svg+xml"
    assert "img-src 'self'" in PAGE_CSP and r.text.startswith("<svg")


async def test_only_the_packages_files_by_plain_name(harness: Harness) -> None:
    for path in ("/static/nope.js", "/static/..%2fserver.py", "/static/app.py",
                 "/static/.hidden.js", "/static/index.html/x", "/static/%2e%2e/config.py"):
        r = await harness.client.get(path)
        assert r.status_code == 404, path
