"""Composition: the whole server as one tree of nurseries.

    serve
    └── store                (outermost: flushes last)
        ├── listener         (PostgreSQL only: other nodes' notifications)
        └── engine nursery
            ├── mirror       (PostgreSQL only: other nodes' jobs into the hub)
            ├── supervisor   (job runs)
            ├── housekeeping (retention)
            ├── http         (stops accepting first)
            └── health       (health checks: verdicts to the engine)

Rules: the data directory's lock (datadir.py) and the bound port come first:
a server that cannot have both refuses to start before it touches a job.
Nesting order is shutdown order. `serve` is a service: it calls
`task_status.started(handle)` once the port is bound; `handle.request_shutdown()`
starts the graceful stop (stop accepting, bounce running jobs to QUEUED, wait
for their children, flush the store); cancelling `serve` is the hard stop.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import trio

from . import datadir
from .api.app import create_app
from .api.common import Services
from .api.idempotency import IdempotentSubmits
from .auth import KeyRing
from .cluster import Cluster, node_id_for, share_keys
from .config import Config
from .dataplane import DataPlane, serve_front_door, stream_fallback
from .dataplane.frontdoor import bind_socket
from .dataplane.routes import DEFAULT_ROUTES, RouteTable
from .engine import Engine
from .health import HealthService
from .housekeeping import Housekeeping
from .hub import Hub
from .metrics import Gauges, Metrics
from .mirror import CHANNELS, Mirror
from .store import open_store
from .store.postgres_listen import Listener
from .supervisor import Supervisor

log = logging.getLogger("jobserver")

# After the last job is bounced, how long stream clients get to see it.
SHUTDOWN_MARGIN = 5.0
# At most this long for subscribers to receive the last events before the 1001.
SETTLE_SECONDS = 1.0


@dataclass(eq=False)
class Server:
    config: Config
    engine: Engine
    supervisor: Supervisor
    keyring: KeyRing
    port: int
    housekeeping: Housekeeping
    _shutdown: trio.Event = field(default_factory=trio.Event)

    @property
    def url(self) -> str:
        host = self.config.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def request_shutdown(self) -> None:
        self._shutdown.set()


async def serve(config: Config, *, routes: RouteTable = DEFAULT_ROUTES,
                task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED) -> None:
    """The whole server; `routes` are the data plane's stream routes."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    with datadir.locked(config.data_dir), _listening(config) as listen_socket:
        await _serve(config, routes, listen_socket, task_status)


@contextlib.contextmanager
def _listening(config: Config) -> Iterator[socket.socket]:
    """The bound port, before anything else (a node announces itself to the others
    only once it is sure to serve); closed when the server is done."""
    try:
        sock = bind_socket(config.host, config.port)
    except OSError as exc:
        raise datadir.StartRefused(
            f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from None
    with sock:
        yield sock


async def _serve(config: Config, routes: RouteTable, listen_socket: socket.socket,
                 task_status: trio.TaskStatus[Server]) -> None:
    metrics = Metrics()  # this server's own registry
    node = None if config.database_url is None else node_id_for(config.data_dir)
    store = open_store(config, observe_commit=metrics.observe_commit, node=node)
    async with trio.open_nursery() as store_nursery:
        await store_nursery.start(store.run)
        url = config.database_url
        if url is not None:  # other nodes may share the database
            await share_keys(config, url)  # before the keys are read: see cluster.py
        keyring = KeyRing.for_config(config)
        engine = Engine(config, store, Hub(), metrics=metrics)
        supervisor = Supervisor(engine)
        mirror = cluster = listener = None
        if url is not None:
            listener = Listener(url)
            mirror = Mirror(engine)
            listener.listen(CHANNELS, mirror)
            assert node is not None
            cluster = Cluster(engine, url, node_id=node,
                              running=lambda: supervisor.running, listener=listener,
                              settle=mirror.settle)
            engine.claims = cluster
            engine.node_id = cluster.node_id
            await store_nursery.start(listener.run)
            await cluster.register()
        async with trio.open_nursery() as engine_nursery:
            await engine.recover()
            if mirror is not None and cluster is not None:
                await engine_nursery.start(mirror.run)
                await engine_nursery.start(cluster.run)
            await engine_nursery.start(supervisor.run)
            housekeeping = Housekeeping(engine)
            await engine_nursery.start(housekeeping.run)
            http_scope = trio.CancelScope()
            plane = DataPlane(config=config, engine=engine, keyring=keyring, routes=routes,
                              metrics=metrics)
            metrics.watch(Gauges(
                running=lambda: supervisor.running, queued=lambda: len(engine.queued_ids()),
                slots=config.slots, hub=engine.hub.statistics, store=store.statistics,
                stream=plane.statistics,
                mirror=None if mirror is None else mirror.statistics,
                listener=None if listener is None else listener.statistics,
                cluster=None if cluster is None else cluster.statistics))
            services = Services(config=config, engine=engine, supervisor=supervisor,
                                keyring=keyring, started_at=time.time(),
                                submits=IdempotentSubmits(engine), metrics=metrics)
            port = await engine_nursery.start(_serve_http, services, plane, http_scope,
                                            listen_socket)
            health = HealthService(engine, config.health_checks, api=(own_host(config.host), port))
            await engine_nursery.start(health.run)
            server = Server(config, engine, supervisor, keyring, port, housekeeping)
            task_status.started(server)
            await server._shutdown.wait()
            log.info("shutting down: bouncing %d running jobs", supervisor.running)
            engine.accepting = False
            with trio.move_on_after(config.kill_grace + SHUTDOWN_MARGIN):
                await supervisor.bounce_all()
                if cluster is not None:
                    await cluster.leave()  # its queued jobs, bounced or not, to other nodes
            # Subscribers still catching up get the bounces before the 1001.
            with trio.move_on_after(SETTLE_SECONDS):
                await plane.settle()
            http_scope.cancel()
            engine_nursery.cancel_scope.cancel()
        store_nursery.cancel_scope.cancel()


def own_host(host: str) -> str:
    """Where the server reaches itself: a wildcard address means loopback."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


async def _serve_http(services: Services, plane: DataPlane, scope: trio.CancelScope,
                      listen_socket: socket.socket, *,
                      task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """The front door: stream routes on the data plane, the rest on the Quart app."""
    config, engine, keyring = services.config, services.engine, services.keyring
    app = stream_fallback(create_app(services), engine=engine, keyring=keyring, config=config,
                          plane=plane)
    with scope:
        await serve_front_door(config, engine, keyring, app,
                               listen_socket=listen_socket, plane=plane,
                               task_status=task_status)
