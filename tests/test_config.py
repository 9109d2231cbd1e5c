"""Settings: defaults < config file < JOBSERVER_* env < flags; bad ones named."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import jwt
import pytest

from jobserver.auth import KeyRing, Principal
from jobserver.config import ConfigError, load_config
from jobserver.errors import Unauthenticated

from .conftest import PY


def test_defaults_load_the_bundled_templates() -> None:
    config = load_config({}, environ={})
    assert config.host == "127.0.0.1" and config.port == 8000
    assert {"sleep", "fail", "chatty", "pipeline"} <= set(config.templates)


def test_precedence(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[server]\nport = 9001\nslots = 7\nhost = "0.0.0.0"\n'
                    '[templates.t]\nargv = ["true"]\n')
    env = {"JOBSERVER_PORT": "9002", "JOBSERVER_ALLOW_ADHOC": "false",
           "JOBSERVER_ALLOWED_ORIGINS": "https://a.example, https://b.example"}
    config = load_config({"config_file": str(path), "port": 9003}, environ=env)
    assert config.port == 9003 and config.slots == 7 and config.host == "0.0.0.0"
    assert config.allow_adhoc is False
    assert config.allowed_origins == ("https://a.example", "https://b.example")
    assert set(config.templates) == {"t"}
    assert load_config({"config_file": str(path)}, environ=env).port == 9002


def test_database_url_from_file_env_and_flag_never_shown(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[server]\ndatabase_url = "postgresql://app:f1le@db/jobs"\n')
    assert load_config({}, environ={}).database_url is None  # SQLite in the data dir
    config = load_config({"config_file": str(path)}, environ={})
    assert config.database_url == "postgresql://app:f1le@db/jobs"
    env = {"JOBSERVER_DATABASE_URL": "postgres://app:env@db/jobs"}
    assert load_config({"config_file": str(path)}, environ=env).database_url == env[
        "JOBSERVER_DATABASE_URL"]
    flagged = load_config({"config_file": str(path), "database_url": "postgresql://f/x"},
                          environ=env)
    assert flagged.database_url == "postgresql://f/x"
    assert load_config({}, environ={"JOBSERVER_DATABASE_URL": ""}).database_url is None
    assert "f1le" not in repr(config) and "postgresql:" not in repr(config)
    with pytest.raises(ConfigError, match="database_url"):
        load_config({}, environ={"JOBSERVER_DATABASE_URL": "mysql://db/jobs"})


@pytest.mark.parametrize(("text", "message"), [
    ("[server]\nport = 70000\n", "port"),
    ("[server]\nslots = 0\n", "slots"),
    ("[server]\ncolour = 1\n", "colour"),
    ("[server]\nkill_grace = 'soon'\n", "kill_grace"),
    ("[templates.x]\nargv = ['echo', '{nope}']\n", "undeclared"),
    ("not toml at all [", "config file"),
])
def test_bad_settings_are_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config({"config_file": str(path)}, environ={})


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config({"config_file": "/nonexistent/c.toml"}, environ={})


def test_bad_env_value() -> None:
    with pytest.raises(ConfigError, match="allow_adhoc"):
        load_config({}, environ={"JOBSERVER_ALLOW_ADHOC": "perhaps"})


def test_token_command(tmp_path: Path) -> None:
    out = subprocess.run(
        [PY, "-m", "jobserver", "token", "--sub", "alice", "--role", "user", "--ttl", "60",
         "--data-dir", str(tmp_path), "--new-key"], capture_output=True, text=True, check=True,
        timeout=60)
    token = out.stdout.strip()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["sub"] == "alice" and claims["role"] == "user"
    assert claims["exp"] - claims["iat"] == 60
    assert KeyRing.load_or_create(tmp_path).verify(token).sub == "alice"
    assert (tmp_path / "signing.key").stat().st_mode & 0o777 == 0o600


def test_cli_reports_bad_config(tmp_path: Path) -> None:
    out = subprocess.run([PY, "-m", "jobserver", "--config", str(tmp_path / "none.toml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "cannot read config file" in out.stderr


def test_a_verified_token_is_remembered_until_it_expires(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ring = KeyRing.load_or_create(tmp_path)
    token = ring.issue("alice", "user", ttl=60)
    checked: list[str] = []
    check = ring._verify

    def counting(token: str, purpose: str) -> tuple[Principal, float]:
        checked.append(purpose)
        return check(token, purpose)

    monkeypatch.setattr(ring, "_verify", counting)
    assert ring.verify(token).sub == "alice" and ring.verify(token).sub == "alice"
    assert checked == ["api"]
    with pytest.raises(Unauthenticated, match="unknown key"):
        ring.verify(token, purpose="other")  # remembered per purpose
    later = time.time() + 3600
    monkeypatch.setattr(time, "time", lambda: later)
    ring.verify(token)  # past its exp: checked again (pyjwt's clock did not move)
    assert checked == ["api", "other", "api"]


@pytest.mark.parametrize(("environ", "expected"), [
    ({"XDG_DATA_HOME": "/x/data", "HOME": "/home/me"}, "/x/data/jobserver"),
    ({"HOME": "/home/me"}, "/home/me/.local/share/jobserver"),
    # The XDG rule: a relative XDG_DATA_HOME is ignored.
    ({"XDG_DATA_HOME": "rel", "HOME": "/home/me"}, "/home/me/.local/share/jobserver"),
    ({"XDG_DATA_HOME": "", "HOME": "/home/me"}, "/home/me/.local/share/jobserver"),
])
def test_the_data_directory_defaults_to_the_users(environ: dict[str, str],
                                                   expected: str) -> None:
    assert load_config({}, environ=environ).data_dir == Path(expected)
    assert load_config({}, environ={**environ, "JOBSERVER_DATA_DIR": "/d"}).data_dir == \
        Path("/d")
    assert load_config({"data_dir": "here"}, environ=environ).data_dir == Path("here")
