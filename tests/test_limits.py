"""The sans-IO pieces of the front door's limits: the request clock, the count."""

from __future__ import annotations

import logging
import math

import pytest

from jobserver.config import ConfigError, load_config
from jobserver.dataplane.limits import (
    LOG_EVERY_SECONDS,
    ConnectionCount,
    ReadLimits,
    RequestClock,
)

LIMITS = ReadLimits(head_seconds=2.0, body_seconds=5.0, idle_seconds=1.0)


def test_each_part_of_each_request_is_timed_from_when_it_began() -> None:
    clock = RequestClock(LIMITS)
    assert clock.deadline("idle", 0, 100.0) == 101.0
    # The head began: its own limit, from its first byte, however often asked.
    assert clock.deadline("head", 0, 100.5) == 102.5
    assert clock.deadline("head", 0, 102.0) == 102.5
    assert clock.deadline("body", 1, 102.1) == 107.1
    assert clock.deadline("body", 1, 106.0) == 107.1
    # Answering: nothing bounded here.
    assert clock.deadline(None, 1, 106.5) == math.inf
    # The next request's head is a new one, even right after the last.
    assert clock.deadline("head", 1, 107.0) == 109.0
    assert clock.deadline("head", 2, 108.0) == 110.0


def test_connections_are_counted_per_client_and_in_all(
        caplog: pytest.LogCaptureFixture) -> None:
    count = ConnectionCount(total=3, per_client=2)
    assert count.admit("a", 0.0) and count.admit("a", 0.0)
    assert not count.admit("a", 0.0)
    assert count.admit("b", 0.0)
    assert not count.admit("c", 1.0)  # the total
    count.release("a")
    assert count.admit("c", 2.0)
    assert count.open == 3
    for client in ("a", "b", "c"):
        count.release(client)
    assert count.open == 0 and count.admit("a", 3.0)
    # Refusals: the first logged, the rest counted into the next line.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="jobserver.frontdoor"):
        full = ConnectionCount(total=1, per_client=1)
        assert full.admit("x", 0.0)
        for t in (0.0, 1.0, 2.0, LOG_EVERY_SECONDS + 0.5):
            assert not full.admit("y", t)
    assert [r.getMessage() for r in caplog.records] == [
        "refused a connection from y: 1 open in all",
        "refused a connection from y: 1 open in all (and 2 more since the last such line)"]


@pytest.mark.parametrize("name", ["handshake_timeout", "body_timeout", "keep_alive_timeout",
                                  "max_connections", "max_connections_per_client"])
def test_a_limit_must_be_more_than_zero(name: str) -> None:
    assert getattr(load_config(environ={f"JOBSERVER_{name.upper()}": "7"}), name) == 7
    with pytest.raises(ConfigError, match=name):
        load_config(environ={f"JOBSERVER_{name.upper()}": "0"})
