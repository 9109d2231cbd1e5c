"""Health checks: configured components probed by command, TCP and HTTP, with
timeouts, published on the system topic (and so in the multiplex dialect)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trio

from jobserver.config import ConfigError, load_config
from jobserver.core.health import HealthCheck, HealthCheckError, parse_health_check
from jobserver.health import http_probe, run_probe

from .multiplex_helpers import Mx
from .test_dataplane_helpers import running_server


async def wait_health(engine: object, wanted: dict[str, str], timeout: float = 5.0) -> None:
    health: dict[str, str] = engine.health  # type: ignore[attr-defined]
    with trio.fail_after(timeout):
        while any(health.get(k) != v for k, v in wanted.items()):
            await trio.sleep(0.01)


async def test_commands_up_down_and_timing_out(data_dir: Path) -> None:
    checks = (
        HealthCheck(name="vector_db", command=("true",), interval=0.05, timeout=1.0),
        HealthCheck(name="model_service", command=("false",), interval=0.05, timeout=1.0),
        HealthCheck(name="slow", command=("sleep", "5"), interval=0.05, timeout=0.2),
    )
    async with running_server(data_dir, health_checks=checks) as h:
        start = trio.current_time()
        await wait_health(h.server.engine, {"vector_db": "up", "model_service": "down",
                                            "slow": "down", "api": "up", "database": "up"})
        # The slow probe was cut off at its timeout, not after its 5 s.
        assert trio.current_time() - start < 4.0
        mx = await Mx.open(h.server.port, h.alice)
        await mx.send("subscribe", {"channel": "system_status"})
        snapshot = await mx.recv()
        assert snapshot["type"] == "system_status_update"
        data = snapshot["data"]
        assert list(data) == ["api_status", "database_status", "model_service_status",
                              "slow_status", "vector_db_status", "active_tasks",
                              "pending_tasks", "updated_at"]
        assert (data["api_status"], data["database_status"], data["vector_db_status"],
                data["model_service_status"], data["slow_status"]) == (
            "operational", "operational", "operational", "down", "down")
        await mx.aclose()


async def test_unconfigured_components_are_left_out(data_dir: Path) -> None:
    async with running_server(data_dir) as h:
        await wait_health(h.server.engine, {"api": "up", "database": "up"})
        mx = await Mx.open(h.server.port, h.alice)
        await mx.send("subscribe", {"channel": "system_status"})
        data = (await mx.recv())["data"]
        assert set(data) == {"api_status", "database_status", "active_tasks", "pending_tasks",
                             "updated_at"}
        assert "vector_db_status" not in data and "model_service_status" not in data
        await mx.aclose()


async def test_a_verdict_that_changes_is_published(data_dir: Path, tmp_path: Path) -> None:
    flag = tmp_path / "up"
    checks = (HealthCheck(name="vector_db", command=("test", "-e", str(flag)), interval=0.05,
                          timeout=1.0),)
    async with running_server(data_dir, health_checks=checks) as h:
        await wait_health(h.server.engine, {"vector_db": "down", "api": "up", "database": "up"})
        mx = await Mx.open(h.server.port, h.alice)
        await mx.send("subscribe", {"channel": "system_status"})
        assert (await mx.recv())["data"]["vector_db_status"] == "down"
        flag.touch()
        update = await mx.recv()
        assert update["type"] == "system_status_update"
        assert update["data"]["vector_db_status"] == "operational"
        await mx.aclose()


async def test_tcp_and_http_probes(data_dir: Path) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    closed = await trio.open_tcp_listeners(0, host="127.0.0.1")
    closed_port = closed[0].socket.getsockname()[1]
    await closed[0].aclose()  # nothing listens there now
    try:
        checks = (HealthCheck(name="cache", tcp=("127.0.0.1", port), interval=0.05),
                  HealthCheck(name="queue", tcp=("127.0.0.1", closed_port), interval=0.05))
        async with running_server(data_dir, health_checks=checks) as h:
            await wait_health(h.server.engine, {"cache": "up", "queue": "down"})
            self_port = h.server.port
            engine = h.server.engine
            # HTTP: the server's own pages, one there and one not.
            assert await run_probe(lambda: http_probe("127.0.0.1", self_port, "/healthz")) == "up"
            assert await run_probe(lambda: http_probe("127.0.0.1", self_port, "/nope")) == "down"
            assert await run_probe(lambda: http_probe("127.0.0.1", closed_port, "/")) == "down"
            assert engine.health["api"] == "up"
    finally:
        await listeners[0].aclose()


def test_config_file_tables(tmp_path: Path) -> None:
    path = tmp_path / "jobserver.toml"
    path.write_text("""
[health.vector_db]
command = ["true"]
interval = 10
timeout = 2
[health.model_service]
http = "http://127.0.0.1:9000/health"
[health.cache]
tcp = "localhost:6379"
""")
    config = load_config({"config_file": str(path)}, environ={})
    assert config.health_checks == (
        HealthCheck(name="vector_db", command=("true",), interval=10.0, timeout=2.0),
        HealthCheck(name="model_service", http="http://127.0.0.1:9000/health"),
        HealthCheck(name="cache", tcp=("localhost", 6379)),
    )
    path.write_text('[health.vector_db]\ncommand = "true"\n')
    with pytest.raises(ConfigError, match=re.escape("health.vector_db.command")):
        load_config({"config_file": str(path)}, environ={})


@pytest.mark.parametrize(("name", "table", "error"), [
    ("api", {"command": ["true"]}, "not one of api, database"),
    ("x", {"command": ["true"], "tcp": "a:1"}, "exactly one of"),
    ("x", {}, "exactly one of"),
    ("x", {"tcp": "nohost"}, "host:port"),
    ("x", {"http": "ftp://x"}, "http:// URL"),
    ("x", {"command": ["true"], "timeout": 0}, "positive number"),
    ("x", {"command": ["true"], "every": 3}, "unknown key"),
])
def test_bad_checks_are_refused(name: str, table: dict[str, object], error: str) -> None:
    with pytest.raises(HealthCheckError, match=re.escape(error)):
        parse_health_check(name, table)
