"""Where the command line finds its server: the login file and the environment.

Rules: the URL is `--url`, else JOBSERVER_URL, else the login file, else
http://127.0.0.1:8000 (`http://` assumed when it has no scheme); the token is
JOBSERVER_TOKEN, else the login file (never a flag: a flag lands in shell
history and `ps`). The login file is
$XDG_CONFIG_HOME/jobserver/config.toml (~/.config/... without it), written
whole with mode 0600 from the start (never chmod after the token is in it).
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    url: str
    token: str | None
    # Where the token came from, for the message when it is missing or refused.
    token_source: str


class SettingsError(Exception):
    pass


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "jobserver" / "config.toml"


def read_login(path: Path) -> dict[str, str]:
    try:
        doc = tomllib.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SettingsError(f"cannot read {path}: {exc}") from None
    return {k: v for k, v in doc.items() if k in ("url", "token") and isinstance(v, str)}


def write_login(path: Path, *, url: str, token: str) -> None:
    """Replace the file atomically; it is 0600 from its first byte."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # A TOML basic string accepts JSON's escapes.
    text = f"url = {json.dumps(url)}\ntoken = {json.dumps(token)}\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def with_scheme(url: str) -> str:
    """`localhost:8000` means http://localhost:8000 (httpx would read `localhost`
    as the scheme)."""
    return url if "://" in url else f"http://{url}"


def resolve(url_flag: str | None, environ: Mapping[str, str] | None = None) -> Target:
    environ = os.environ if environ is None else environ
    path = config_path(environ)
    login = read_login(path)
    url = with_scheme(url_flag or environ.get("JOBSERVER_URL") or login.get("url") or DEFAULT_URL)
    if environ.get("JOBSERVER_TOKEN"):
        return Target(url=url.rstrip("/"), token=environ["JOBSERVER_TOKEN"],
                      token_source="JOBSERVER_TOKEN")
    return Target(url=url.rstrip("/"), token=login.get("token"), token_source=str(path))
