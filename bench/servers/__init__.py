"""Baseline servers of the fan-out benchmark, each a standalone process.

All speak the same control surface, so bench/targets.py drives them alike:
subscribers at `/api/v1/ws/jobs/<id>/logs?token=x` (a `system` message on
accept, then one `log` message per event), `POST /publish?job=<id>&count=K&
burst=B&rate=R` (202 at once, then K events in bursts of B at R events/s, 0 =
flat out), `GET /stats` ({"subscribers": n, "publishing": n}), `GET /health`.
"""
