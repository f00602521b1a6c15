"""Publish/subscribe for WebSocket connections, in one process or many.

::

    hub = Hub()                                   # in-process, nothing to install
    hub = Hub(RedisBackend("redis://127.0.0.1:6379/0"))   # shared by several processes

    class Chat(WebSocketHandler):
        def open(self):
            hub.subscribe("lobby", self)          # unsubscribed automatically on close
        async def on_message(self, message):
            await hub.publish("lobby", message)

Each subscribed connection gets each published message once, in publish
order per publisher, through the encode-once :func:`~tornado_websocket.broadcast`.
A slow consumer does not hold up the others: a connection with more than
``max_pending_bytes`` unsent is closed with ``slow_consumer_code`` (1013,
"try again later") instead of being written to.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Optional

from tornado.ioloop import IOLoop

from tornado_websocket.broadcast import broadcast
from tornado_websocket.connection import WebSocketConnection
from tornado_websocket.errors import WebSocketError
from tornado_websocket.frames import CloseCode
from tornado_websocket.inbox import Data

hub_log = logging.getLogger("tornado_websocket.hub")

Deliver = Callable[[str, Data], None]

DEFAULT_MAX_PENDING_BYTES = 1024 * 1024


class HubUnavailableError(WebSocketError):
    """The backend cannot publish right now (for example, Redis is down); the message was not sent."""


def _as_connection(target: Any) -> WebSocketConnection:
    connection = target if isinstance(target, WebSocketConnection) else getattr(target, "_connection", None)
    if not isinstance(connection, WebSocketConnection):
        raise TypeError(f"{type(target).__name__} is not an open WebSocket")
    return connection


def _resolved() -> asyncio.Future[None]:
    future: asyncio.Future[None] = IOLoop.current().asyncio_loop.create_future()  # type: ignore[attr-defined]
    future.set_result(None)
    return future


class InProcessBackend:
    """Delivers published messages to this process's subscribers only. The default."""

    def __init__(self) -> None:
        self._deliver: Optional[Deliver] = None

    def start(self, deliver: Deliver) -> None:
        self._deliver = deliver

    def channel_added(self, channel: str) -> asyncio.Future[None]:
        return _resolved()

    def channel_removed(self, channel: str) -> None:
        pass

    async def publish(self, channel: str, message: Data) -> None:
        assert self._deliver is not None, "the backend is not attached to a Hub"
        self._deliver(channel, message)

    async def close(self) -> None:
        pass


class Hub:
    """Channels of WebSocket connections; see the module docstring.

    ``backend`` is :class:`InProcessBackend` (default) or :class:`RedisBackend`.
    """

    def __init__(
        self,
        backend: Optional[Any] = None,
        *,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        slow_consumer_code: int = CloseCode.TRY_AGAIN_LATER,
    ) -> None:
        self.backend = backend if backend is not None else InProcessBackend()
        self.max_pending_bytes = max_pending_bytes
        self.slow_consumer_code = slow_consumer_code
        self._channels: dict[str, set[WebSocketConnection]] = {}
        self._subscriptions: dict[WebSocketConnection, set[str]] = {}
        self.backend.start(self._deliver)

    def subscribe(self, channel: str, target: Any) -> asyncio.Future[None]:
        """Subscribe a connection (handler, client or ``WebSocketConnection``) to ``channel``.

        Returns a future that completes once the backend delivers the
        channel's messages here (at once in-process; after Redis confirmed the
        subscription otherwise); it may be ignored. A connection that is
        already closed is not subscribed. Raises ``TypeError`` for something
        that is not a WebSocket.
        """
        connection = _as_connection(target)
        if connection.closed:
            # The peer left (say, while on_message awaited): nothing to deliver to.
            return _resolved()
        members = self._channels.get(channel)
        if members is None:
            members = self._channels[channel] = set()
        members.add(connection)
        channels = self._subscriptions.get(connection)
        if channels is None:
            channels = self._subscriptions[connection] = set()
            connection.add_close_callback(self._forget)
        channels.add(channel)
        return self.backend.channel_added(channel)

    def unsubscribe(self, channel: str, target: Any) -> None:
        """Stop sending ``channel`` to a connection (a no-op if it was not subscribed)."""
        connection = _as_connection(target)
        self._leave(channel, connection)
        channels = self._subscriptions.get(connection)
        if channels is not None:
            channels.discard(channel)

    def _forget(self, connection: WebSocketConnection) -> None:
        for channel in self._subscriptions.pop(connection, set()):
            self._leave(channel, connection)

    def _leave(self, channel: str, connection: WebSocketConnection) -> None:
        """Take ``connection`` out of ``channel``; drop the channel when it empties."""
        members = self._channels.get(channel)
        if members is not None:
            members.discard(connection)
            if not members:
                del self._channels[channel]
                self.backend.channel_removed(channel)

    def subscribers(self, channel: str) -> int:
        """How many connections of this process are subscribed to ``channel``."""
        return len(self._channels.get(channel, ()))

    async def publish(self, channel: str, message: Data) -> None:
        """Send ``message`` (``str`` as text, ``bytes`` as binary) to every subscriber of ``channel``.

        With Redis, subscribers in every process get it. Raises
        :class:`HubUnavailableError` when the backend cannot take it.
        """
        if not isinstance(message, (str, bytes)):
            raise TypeError(f"cannot publish {type(message).__name__}; publish str or bytes")
        await self.backend.publish(channel, message)

    def _deliver(self, channel: str, message: Data) -> None:
        """Fan one message out to this process's subscribers; close the ones that fall behind."""
        members = self._channels.get(channel)
        if not members:
            return
        limit = self.max_pending_bytes
        keep = []
        for connection in members:
            if connection.is_closing():
                continue
            pending = connection.write_buffer_size
            if pending > limit:
                hub_log.info("closing a slow consumer on %r: %d bytes unsent, over %d", channel, pending, limit)
                connection.close(self.slow_consumer_code, "slow consumer")
                continue
            keep.append(connection)
        broadcast(keep, message, binary=isinstance(message, bytes))

    async def close(self) -> None:
        """Stop the backend (connections are left open)."""
        await self.backend.close()


class RedisBackend:
    """Redis pub/sub, so that hubs in several processes (or hosts) share channels.

    Needs ``pip install tornado_websocket[redis]``. Channels are named
    ``prefix + channel`` in Redis. When Redis goes away the backend
    reconnects with exponential backoff (``reconnect_min`` to
    ``reconnect_max`` seconds), resubscribes, and logs how long it was down
    and how many local publishes failed meanwhile; messages published by
    other processes during that time are not replayed.
    """

    TEXT, BINARY = b"t", b"b"

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "tornado_websocket:",
        reconnect_min: float = 0.1,
        reconnect_max: float = 5.0,
    ) -> None:
        import redis.asyncio  # an optional dependency: fail here, with its own message

        self._redis_module = redis.asyncio
        self.url = url
        self.prefix = prefix
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self._deliver: Optional[Deliver] = None
        self._publisher: Any = redis.asyncio.from_url(url)
        self._wanted: set[str] = set()
        self._active: set[str] = set()
        self._ready: dict[str, list[asyncio.Future[None]]] = {}
        self._task: Optional[asyncio.Task[None]] = None
        self._down_since: Optional[float] = None
        self._failed_publishes = 0
        self._closing = False
        self._delay = reconnect_min

    def start(self, deliver: Deliver) -> None:
        # The subscriber task starts on first use, on the loop that is running then: a Hub
        # may be made at import time, before asyncio.run() creates the loop.
        self._deliver = deliver

    def _ensure_running(self) -> None:
        if self._task is None and not self._closing:
            self._task = asyncio.ensure_future(self._run())

    def is_subscribed(self, channel: str) -> bool:
        return channel in self._active

    def channel_added(self, channel: str) -> asyncio.Future[None]:
        future: asyncio.Future[None] = IOLoop.current().asyncio_loop.create_future()  # type: ignore[attr-defined]
        if channel in self._active:
            future.set_result(None)
        else:
            self._ready.setdefault(channel, []).append(future)
        self._wanted.add(channel)
        self._ensure_running()
        return future

    def channel_removed(self, channel: str) -> None:
        self._wanted.discard(channel)
        self._release_waiters(channel)

    def _release_waiters(self, channel: Optional[str] = None) -> None:
        """Complete the subscribe futures of ``channel`` (of every channel if None): nobody waits any more."""
        for name in [channel] if channel is not None else list(self._ready):
            for future in self._ready.pop(name, []):
                if not future.done():
                    future.set_result(None)

    async def publish(self, channel: str, message: Data) -> None:
        payload = self.TEXT + message.encode("utf-8") if isinstance(message, str) else self.BINARY + message
        self._ensure_running()
        errors = (OSError, self._redis_module.RedisError)
        try:
            await self._publisher.publish(self.prefix + channel, payload)
        except errors:
            # After Redis restarted, the pooled connection is stale and fails once;
            # a second try opens a new one.
            try:
                await self._publisher.publish(self.prefix + channel, payload)
            except errors as exc:
                self._failed_publishes += 1
                raise HubUnavailableError(f"Redis is unavailable, the message was not published: {exc}") from exc

    async def _run(self) -> None:
        self._delay = self.reconnect_min
        while not self._closing:
            client: Any = self._redis_module.from_url(self.url)
            pubsub: Any = client.pubsub()
            try:
                await self._listen(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not isinstance(exc, (OSError, self._redis_module.RedisError)):
                    hub_log.error("unexpected error in the Redis subscriber; restarting it", exc_info=True)
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    hub_log.warning("lost the Redis connection (%s); reconnecting", exc)
                self._active.clear()
                await asyncio.sleep(self._delay)
                self._delay = min(self._delay * 2, self.reconnect_max)
                continue
            finally:
                try:
                    await pubsub.aclose()
                    await client.aclose()
                except Exception:
                    pass

    async def _listen(self, pubsub: Any) -> None:
        """Keep the subscriptions in step with ``_wanted`` and deliver what arrives."""
        prefix = self.prefix
        await pubsub.ping()
        self._delay = self.reconnect_min  # connected: the next outage backs off from the start
        if self._down_since is not None:
            hub_log.warning(
                "Redis is back after %.1f s; %d local publish(es) failed meanwhile, and messages other "
                "processes published meanwhile were not delivered here",
                time.monotonic() - self._down_since,
                self._failed_publishes,
            )
            self._down_since = None
            self._failed_publishes = 0
        while not self._closing:
            added = self._wanted - self._active
            removed = self._active - self._wanted
            if added:
                await pubsub.subscribe(*(prefix + c for c in added))
            if removed:
                await pubsub.unsubscribe(*(prefix + c for c in removed))
                self._active -= removed
            message = await pubsub.get_message(timeout=0.05)
            if message is None:
                continue
            kind = message.get("type")
            if kind not in ("subscribe", "message"):
                continue  # pong, unsubscribe
            channel = message["channel"].decode("utf-8")[len(prefix) :]
            if kind == "subscribe":
                self._active.add(channel)
                for future in self._ready.pop(channel, []):
                    if not future.done():
                        future.set_result(None)
            elif kind == "message" and self._deliver is not None:
                data: bytes = message["data"]
                body = data[1:]
                self._deliver(channel, body.decode("utf-8") if data[:1] == self.TEXT else body)

    async def close(self) -> None:
        self._closing = True
        self._release_waiters()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        await self._publisher.aclose()
