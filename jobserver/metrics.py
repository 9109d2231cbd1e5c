"""The server's Prometheus metrics: one `Metrics` per server, its own registry.

Rules: no module-level registry (several servers share a process in tests);
`server.py` builds one `Metrics` and hands it to the store (`observe_commit`),
the engine, the data plane and the app. Events are counted where they happen,
once each, never per log line or per subscriber: a job's lifecycle in
`job_events` (called by the engine's `record`, which the log hot path does not
use), an HTTP request once, a stream connection once, a group commit once.
Figures that already exist as plain counters or as state (queue depth, running
jobs, bytes and messages the data plane sent, hub and store counts) are read
at scrape time by `_Snapshot`, a custom collector, so their hot paths carry no
metric call. Names follow Prometheus conventions (`_total`, `_seconds`,
`_bytes`); every metric has HELP; labels never hold ids (routes are templates,
templates are the admin's finite list).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .core import events as ev
from .core.ids import JobId
from .core.job import Job

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: a job waits from milliseconds (a free slot) to hours (a long queue).
JOB_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
               4 * 3600.0, 24 * 3600.0)
# Seconds: a group commit takes a millisecond or so, a backlog's tens of them.
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
HTTP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
# The route label of a request no route matched (a 404, or a 405 of a method).
UNMATCHED = "unmatched"
# Methods named as such in labels; any other is "other" (a client may send any
# token as a method, and each would be a new series).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Why the front door answered (or closed) a connection before any route did:
# over the connection caps (503), no whole head in time (closed), a head h11
# refused (400/431), a plain request on a WebSocket path (426), no WebSocket
# route there (404/405), a bad target (400), a bad WebSocket handshake or origin.
REFUSALS = ("over_capacity", "slow_head", "bad_head", "upgrade_required", "no_route",
            "bad_target", "bad_handshake", "origin")


@dataclass(frozen=True, slots=True)
class Gauges:
    """Where `_Snapshot` reads the figures that exist as state (each a callable,
    called at scrape time; `stream` returns the data plane's statistics)."""

    running: Callable[[], int]
    queued: Callable[[], int]
    slots: int
    hub: Callable[[], Any]
    store: Callable[[], Any]
    stream: Callable[[], Any] | None = None
    # Several nodes on PostgreSQL only: mirror.py's, postgres_listen.py's and
    # cluster.py's statistics.
    mirror: Callable[[], Any] | None = None
    listener: Callable[[], Any] | None = None
    cluster: Callable[[], Any] | None = None


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_resident_memory_bytes, _cpu_seconds_total, ...
        self.jobs_submitted = Counter(
            "jobserver_jobs_submitted", "Jobs submitted (queued), by template.",
            ["template"], registry=r)
        self.jobs_finished = Counter(
            "jobserver_jobs_finished", "Jobs finished, by template and outcome "
            "(succeeded, failed, killed, cancelled, lost).",
            ["template", "outcome"], registry=r)
        self.queue_wait = Histogram(
            "jobserver_job_queue_wait_seconds", "Time from queued (or bounced) to started.",
            ["template"], buckets=JOB_BUCKETS, registry=r)
        self.run_duration = Histogram(
            "jobserver_job_run_duration_seconds", "Time from started to finished.",
            ["template"], buckets=JOB_BUCKETS, registry=r)
        self.http_requests = Counter(
            "jobserver_http_requests", "HTTP requests answered, by method, route template "
            "(stream routes: the route's name) and status.",
            ["method", "route", "status"], registry=r)
        self.http_duration = Histogram(
            "jobserver_http_request_duration_seconds", "Time to answer a request of the "
            "app (REST, OpenAPI, page, metrics), by method and route template.",
            ["method", "route"], buckets=HTTP_BUCKETS, registry=r)
        self.http_refused = Counter(
            "jobserver_http_refused", "Connections the front door refused before routing, "
            "by reason (over_capacity, slow_head, bad_head, upgrade_required, no_route, "
            "bad_target, bad_handshake, origin).", ["reason"], registry=r)
        for reason in REFUSALS:  # every series there from the start, at 0
            self.http_refused.labels(reason)
        self.stream_opened = Counter(
            "jobserver_stream_connections_opened", "Stream connections accepted, by route "
            "(the dialect's stream route: logs, native-events, jobs-events, async, ...).",
            ["route"], registry=r)
        self.store_commit = Histogram(
            "jobserver_store_commit_duration_seconds", "Time one group commit of the store "
            "takes (one transaction).", buckets=COMMIT_BUCKETS, registry=r)
        self._queued_at: dict[JobId, float] = {}  # live jobs waiting for a slot
        self._snapshot: _Snapshot | None = None

    def watch(self, gauges: Gauges) -> None:
        """Read these at scrape time (once per server, when its parts exist)."""
        if self._snapshot is not None:
            self.registry.unregister(self._snapshot)
        self._snapshot = _Snapshot(gauges)
        self.registry.register(self._snapshot)

    def render(self) -> bytes:
        """The text exposition format of everything registered."""
        return generate_latest(self.registry)

    # ---- events, counted where they happen --------------------------------

    def job_events(self, job: Job, events: Sequence[ev.Event]) -> None:
        """A job's events as the engine records them (`job`: the record after them)."""
        for event in events:
            kind = type(event)
            if kind is ev.Queued:
                self.jobs_submitted.labels(job.template).inc()
                self._queued_at[job.id] = event.ts
            elif kind is ev.Bounce:
                self._queued_at[job.id] = event.ts
            elif kind is ev.Started:
                since = self._queued_at.pop(job.id, None)
                if since is not None:
                    self.queue_wait.labels(job.template).observe(max(0.0, event.ts - since))
            elif kind is ev.Finished:
                assert isinstance(event, ev.Finished)
                self._queued_at.pop(job.id, None)
                self.jobs_finished.labels(job.template, event.outcome).inc()
                if job.started_at is not None:
                    self.run_duration.labels(job.template).observe(
                        max(0.0, event.ts - job.started_at))

    def http_request(self, method: str, route: str, status: int, seconds: float | None) -> None:
        method = method if method in METHODS else "other"
        self.http_requests.labels(method, route, str(status)).inc()
        if seconds is not None:
            self.http_duration.labels(method, route).observe(seconds)

    def refused(self, reason: str) -> None:
        """The front door refused a connection before routing (`reason` in REFUSALS)."""
        self.http_refused.labels(reason).inc()

    def stream_accepted(self, route: str, status: int) -> None:
        """A stream route's opening was answered (`status`: 101 / 200, or a refusal)."""
        self.http_requests.labels("GET", route, str(status)).inc()
        if status < 400:
            self.stream_opened.labels(route).inc()

    def observe_commit(self, seconds: float) -> None:
        self.store_commit.observe(seconds)


# Data plane statistics read at scrape time: (field, metric suffix, kind, HELP).
_STREAM_FIELDS = (
    ("connections", "connections", "gauge",
     "Stream connections open now (raw and through the ASGI fallback)."),
    ("handed_off", "handed_off", "gauge",
     "Connections handed to hypercorn (keep-alive HTTP) now."),
    ("subscribers", "subscribers", "gauge", "Topics followed by stream connections now."),
    ("live", "live", "gauge", "Subscribers written to directly by the publisher."),
    ("catching_up", "catching_up", "gauge",
     "Subscribers reading the store to catch up."),
    ("slow_writers", "slow_writers", "gauge",
     "Stream connections with a backlog (their socket is full)."),
    ("backlog_bytes", "backlog_bytes", "gauge", "Bytes queued in those backlogs."),
    ("channels", "channels", "gauge", "Channels (topic x dialect variant x encoding)."),
    ("bytes_sent", "sent_bytes", "counter", "Bytes the data plane wrote to stream sockets."),
    ("messages_sent", "sent_messages", "counter",
     "Events written to stream subscribers (once per subscriber) and messages sessions sent."),
    ("lagged", "lagged_subscribers", "counter",
     "Subscribers dropped from the live path for falling too far behind (a job's: "
     "to catch up from the store; an aggregate topic's: their session is told)."),
    ("stalled", "stalled_connections", "counter",
     "Stream connections closed because the peer stopped reading or answering pings."),
    ("frame_cache_hits", "frame_cache_hits", "counter", "Encoded frames found in the cache."),
    ("frame_cache_misses", "frame_cache_misses", "counter",
     "Encoded frames not in the cache."),
)


# Several nodes' figures (read at scrape time): (source, field, metric, kind, HELP).
_CLUSTER_FIELDS = (
    ("mirror", "mirrored", "jobserver_mirror_jobs", "gauge",
     "Jobs other nodes run that this node mirrors now."),
    ("mirror", "notifications", "jobserver_mirror_notifications", "counter",
     "Notifications the mirror was handed (other nodes' commits and deletions)."),
    ("mirror", "reads", "jobserver_mirror_reads", "counter",
     "Store reads of the mirror catching up with other nodes' jobs (records and pages)."),
    ("mirror", "events", "jobserver_mirror_events", "counter",
     "Other nodes' events the mirror published into this node's hub."),
    ("listener", "connected", "jobserver_listener_connected", "gauge",
     "1 while the LISTEN connection to PostgreSQL is up, else 0."),
    ("listener", "notifications", "jobserver_listener_notifications", "counter",
     "Notifications received on the LISTEN connection."),
    ("listener", "reconnects", "jobserver_listener_reconnects", "counter",
     "LISTEN connections opened again after one was lost."),
    ("cluster", "heartbeat_age", "jobserver_node_heartbeat_age_seconds", "gauge",
     "Seconds since this node last stamped its heartbeat in the database."),
    ("cluster", "nodes_alive", "jobserver_nodes_alive", "gauge",
     "Nodes (this one included) whose heartbeat was fresh at this node's last look."),
    ("cluster", "declared_dead", "jobserver_nodes_declared_dead", "counter",
     "Nodes this node declared dead and rescued the jobs of."),
    ("cluster", "claimed", "jobserver_node_claimed_jobs", "counter",
     "Jobs this node claimed from the shared queue."),
)
# The families only a node with a `database_url` has.
CLUSTER_FAMILIES = frozenset(name for _, _, name, _, _ in _CLUSTER_FIELDS)


class _Snapshot(Collector):
    """The figures that exist as state or plain counters, read at scrape time."""

    def __init__(self, gauges: Gauges) -> None:
        self._gauges = gauges

    def collect(self) -> Iterable[Metric]:
        g = self._gauges
        hub, store = g.hub(), g.store()
        yield _gauge("jobserver_jobs_running", "Jobs running now.", g.running())
        yield _gauge("jobserver_jobs_queued", "Jobs waiting for a slot.", g.queued())
        yield _gauge("jobserver_slots", "Configured concurrent job slots.", g.slots)
        yield _counter("jobserver_events_published", "Events published to the hub.",
                       hub.published)
        yield _gauge("jobserver_hub_subscribers", "Subscribers attached to the hub.",
                     hub.subscribers)
        yield _counter("jobserver_store_committed_events", "Events committed to the store.",
                       store.committed_events)
        yield _counter("jobserver_store_commits", "Group commits of the store.", store.commits)
        yield _gauge("jobserver_store_pending_events",
                     "Events queued for the store or being committed (its queue depth).",
                     store.pending)
        if g.stream is not None:
            stats = g.stream()
            for name, suffix, kind, text in _STREAM_FIELDS:
                make = _gauge if kind == "gauge" else _counter
                yield make(f"jobserver_stream_{suffix}", text, getattr(stats, name))
        found = {"mirror": g.mirror, "listener": g.listener, "cluster": g.cluster}
        read = {source: get() for source, get in found.items() if get is not None}
        for source, field_name, name, kind, text in _CLUSTER_FIELDS:
            if source in read:
                make = _gauge if kind == "gauge" else _counter
                yield make(name, text, float(getattr(read[source], field_name)))


def _gauge(name: str, text: str, value: float) -> Metric:
    return GaugeMetricFamily(name, text, value=value)


def _counter(name: str, text: str, value: float) -> Metric:
    return CounterMetricFamily(name, text, value=value)
