"""The streaming data plane: one port, raw sockets, direct writes.

    serve_front_door(config, engine, keyring, asgi_app, plane=...)   frontdoor.py
    stream_fallback(quart_app, engine=..., keyring=..., config=..., plane=...)  asgi.py
    DataPlane(config=..., engine=..., keyring=...).statistics()     plane.py

Give the front door and the fallback the same `DataPlane`, and its
`statistics` to /metrics. See DESIGN.md, "The data plane", for why it is raw.
"""

from .asgi import StreamFallback, stream_fallback
from .frontdoor import bind_socket, serve_front_door
from .plane import DataPlane, DataPlaneStatistics

__all__ = [
    "DataPlane",
    "DataPlaneStatistics",
    "StreamFallback",
    "bind_socket",
    "serve_front_door",
    "stream_fallback",
]
