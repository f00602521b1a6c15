"""Encode-once fan-out of one message to many connections.

``broadcast(connections, message)`` builds the server frame once and hands
the same bytes to every connection's socket, without a future per
connection, through the connections' public
:meth:`~tornado_websocket.connection.WebSocketConnection.send_prepared`.
Connections that compress (their deflate context differs) or mask (clients)
encode the message for themselves.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Union

from tornado.escape import json_encode

from tornado_websocket.connection import PreparedMessage, WebSocketConnection


def broadcast(connections: Iterable[Any], message: Union[str, bytes, dict[str, Any]], binary: bool = False) -> int:
    """Send ``message`` to every open connection in ``connections``; return how many got it.

    ``connections`` may hold ``WebSocketHandler``, ``WebSocketClientConnection``
    or ``WebSocketConnection`` objects; closing or closed ones are skipped
    (no exception). ``str`` goes as text, ``bytes`` as binary if ``binary``
    else as text, a dict as JSON text. Raises ``TypeError`` for other message
    types. The bytes are handed to each socket (or its send buffer) before
    this returns; nothing is awaited. Call it on the connections' event loop.
    """
    if isinstance(message, dict):
        message = json_encode(message)
    if isinstance(message, str):
        payload = message.encode("utf-8")
    elif isinstance(message, (bytes, bytearray, memoryview)):
        payload = bytes(message)
    else:
        raise TypeError(f"cannot broadcast {type(message).__name__}; send str, bytes or dict")
    prepared = PreparedMessage(payload, binary)
    sent = 0
    for item in connections:
        connection = item if type(item) is WebSocketConnection else item.ws_connection
        if connection is None or connection.is_closing():
            continue
        connection.send_prepared(prepared)
        sent += 1
    return sent
