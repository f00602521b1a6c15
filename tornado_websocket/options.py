"""The settings of one connection, built the same way for server and client.

The server builds :class:`ConnectionOptions` from the handler (its
``ping_interval``, ``ping_timeout``, ``max_message_size``, ... properties,
which read the Application settings), the client from
:func:`~tornado_websocket.websocket_connect`'s arguments; the connection
takes nothing else. Misconfigurations are logged once per process
(:func:`warn_once`), never once per connection.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any, Optional

from tornado_websocket import deflate
from tornado_websocket.metrics import LOG
from tornado_websocket.protocol import DEFAULT_MAX_MESSAGE_SIZE

DEFAULT_CLOSE_TIMEOUT = 5.0
DEFAULT_MAX_WRITE_BUFFER_SIZE = 16 * 1024 * 1024
DEFAULT_MAX_QUEUED_MESSAGES = 32


def warn_once(key: str, message: str, *args: Any) -> None:
    """Log ``message % args`` as a WARNING the first time ``key`` is seen in this process (see metrics.LOG)."""
    LOG.once(key, logging.WARNING, message, *args)


@dataclass(frozen=True)
class ConnectionOptions:
    """What a :class:`~tornado_websocket.connection.WebSocketConnection` is configured with.

    - ``max_message_size``: largest message accepted, in bytes (after
      decompression); ``None`` for no limit. Server: ``websocket_max_message_size``.
    - ``ping_interval``: seconds between keepalive pings; 0 for none.
      Server: ``websocket_ping_interval``.
    - ``ping_timeout``: seconds a pong may take before the connection is
      dropped; 0 for no timeout. Defaults to the interval and is capped to
      it, as in Tornado. Server: ``websocket_ping_timeout``.
    - ``close_timeout``: seconds the close handshake may take before TCP is
      dropped. Server: ``websocket_close_timeout``.
    - ``max_write_buffer_size``: unsent bytes a peer that does not read may
      leave waiting before it is dropped; ``None`` for no limit. Server:
      ``websocket_max_write_buffer_size``.
    - ``max_queued_messages``: received messages that wait for a pull
      consumer before reading pauses.

    Use :meth:`create`, which validates; raises ``ValueError`` for negative
    or otherwise impossible values.
    """

    max_message_size: Optional[int] = DEFAULT_MAX_MESSAGE_SIZE
    ping_interval: float = 0.0
    ping_timeout: float = 0.0
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT
    max_write_buffer_size: Optional[int] = DEFAULT_MAX_WRITE_BUFFER_SIZE
    max_queued_messages: int = DEFAULT_MAX_QUEUED_MESSAGES

    @classmethod
    @functools.lru_cache(maxsize=64)  # connections with the same settings share one object
    def create(
        cls,
        *,
        max_message_size: Optional[int] = DEFAULT_MAX_MESSAGE_SIZE,
        ping_interval: Optional[float] = None,
        ping_timeout: Optional[float] = None,
        close_timeout: Optional[float] = None,
        max_write_buffer_size: Optional[int] = DEFAULT_MAX_WRITE_BUFFER_SIZE,
        max_queued_messages: Optional[int] = None,
    ) -> ConnectionOptions:
        """Validate and fill in defaults (``None`` means the default, as in Tornado's settings)."""
        interval = float(ping_interval or 0.0)
        if interval < 0:
            raise ValueError(f"ping_interval must not be negative, not {ping_interval!r}")
        if ping_timeout is None:
            timeout = interval
        else:
            timeout = float(ping_timeout)
            if timeout < 0:
                raise ValueError(f"ping_timeout must not be negative, not {ping_timeout!r}")
            if interval and timeout > interval:
                warn_once(
                    "ping_timeout",
                    "The WebSocket ping timeout (%s) cannot be longer than the ping interval (%s); using %s",
                    ping_timeout,
                    interval,
                    interval,
                )
                timeout = interval
        close = DEFAULT_CLOSE_TIMEOUT if close_timeout is None else float(close_timeout)
        if close <= 0:
            raise ValueError(f"close_timeout must be positive, not {close_timeout!r}")
        if max_message_size is not None and max_message_size < 0:
            raise ValueError(f"max_message_size must not be negative, not {max_message_size!r}")
        if max_write_buffer_size is not None and max_write_buffer_size < 0:
            raise ValueError(f"max_write_buffer_size must not be negative, not {max_write_buffer_size!r}")
        queued = DEFAULT_MAX_QUEUED_MESSAGES if max_queued_messages is None else int(max_queued_messages)
        if queued < 1:
            raise ValueError(f"max_queued_messages must be at least 1, not {max_queued_messages!r}")
        return cls(max_message_size, interval, timeout, close, max_write_buffer_size, queued)


def warn_unknown_compression_options(options: Optional[dict[str, Any]]) -> None:
    """Warn, once per process for each set of names, about keys permessage-deflate ignores."""
    if options:
        unknown = deflate.unknown_options(options)
        if unknown:
            names = ", ".join(unknown)
            warn_once(f"compression:{names}", "ignoring unknown compression options: %s", names)
