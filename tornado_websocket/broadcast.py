"""Encode-once fan-out of one message to many connections.

``broadcast(connections, message)`` builds the server frame once and hands
the same bytes to every connection's socket, without a future per
connection, through the connection layer's public
:func:`~tornado_websocket.connection.send_prepared_to_all` (with the C
extension: one C loop of ``send()`` over the plain-TCP sockets).
Connections that compress (their deflate context differs) or mask (clients)
encode the message for themselves.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Union

from tornado.escape import json_encode

from tornado_websocket.connection import PreparedMessage, send_prepared_to_all


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
    return send_prepared_to_all(connections, PreparedMessage(payload, binary))
