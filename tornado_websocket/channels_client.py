"""``ChannelsClient``: a Python client of :class:`~tornado_websocket.channels.ChannelsHandler` that survives
disconnections.

::

    client = ChannelsClient(["ws://a:8888/channels", "ws://b:8888/channels"])
    await client.connect()
    await client.subscribe("room")
    offset = await client.publish("room", {"text": "hi"})
    async for event in client:
        if isinstance(event, ChannelMessage): ...
        elif isinstance(event, RecoveryFailed): ...   # reload state: messages may be missing

It reconnects with exponential backoff and jitter (``reconnect_min`` to
``reconnect_max`` seconds), trying the URLs in turn, and subscribes again
with the last offset and epoch it saw on each channel, so that each message
is delivered once, in order. When the server cannot recover (the channel's
history was lost, or trimmed past what was missed) the client gets a
:class:`RecoveryFailed` event for the channel before the messages that
follow. Keepalive pings (``ping_interval``, ``ping_timeout``) notice a link
that went silent and make it reconnect.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from tornado_websocket.client import WebSocketClientConnection, websocket_connect
from tornado_websocket.errors import WebSocketError

client_log = logging.getLogger("tornado_websocket.channels_client")


class ChannelsError(WebSocketError):
    """The server refused a request: ``code`` (``forbidden``, ``rate_limited``...) and ``reason``."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class ChannelsDisconnected(WebSocketError):
    """The connection dropped before the server answered (a publish may or may not have been published)."""


@dataclass(frozen=True)
class ChannelMessage:
    """A message of ``channel`` at ``offset`` of ``epoch``; ``data`` is the JSON value published."""

    channel: str
    offset: int
    epoch: str
    data: Any


@dataclass(frozen=True)
class RecoveryFailed:
    """Messages of ``channel`` published while disconnected could not all be recovered (or its history was lost:
    ``epoch`` is not ``previous_epoch``); what follows continues from the channel's current state."""

    channel: str
    epoch: str
    previous_epoch: Optional[str]
    offset: int


@dataclass(frozen=True)
class PresenceEvent:
    """``kind`` is ``"join"``, ``"leave"`` or ``"presence"`` (``members`` then holds the listing)."""

    channel: str
    kind: str
    member: Optional[dict[str, Any]] = None
    members: list[dict[str, Any]] = field(default_factory=list)


Event = Union[ChannelMessage, RecoveryFailed, PresenceEvent]

_CLOSED: Any = object()  # put in the queue by close(): ends iteration


class _Channel:
    __slots__ = ("epoch", "last", "presence", "info", "ready")

    def __init__(self, since: Optional[int], epoch: Optional[str], presence: bool, info: Any) -> None:
        self.epoch = epoch
        self.last = since
        self.presence = presence
        self.info = info
        self.ready: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()


class ChannelsClient:
    """See the module docstring. ``urls``: one URL or several to fail over between.

    ``connect_options`` go to :func:`~tornado_websocket.client.websocket_connect`.
    """

    def __init__(
        self,
        urls: Union[str, Sequence[str]],
        *,
        reconnect_min: float = 0.1,
        reconnect_max: float = 5.0,
        ping_interval: Optional[float] = None,
        ping_timeout: Optional[float] = None,
        connect_timeout: float = 5.0,
        max_queue: int = 0,
        batch: bool = True,
        **connect_options: Any,
    ) -> None:
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("give at least one URL")
        if batch:  # the server may then put several frames in one message, one per line
            self.urls = [url + ("&" if "?" in url else "?") + "batch=1" for url in self.urls]
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.connect_timeout = connect_timeout
        self.connect_options = connect_options
        #: Connections made (1 after the first), duplicates dropped, recovery failures: for tests and metrics.
        self.connections = 0
        self.duplicates_dropped = 0
        self.recovery_failures = 0
        self.url: Optional[str] = None
        self._channels: dict[str, _Channel] = {}
        self._events: asyncio.Queue[Event] = asyncio.Queue(max_queue)
        self._connection: Optional[WebSocketClientConnection] = None
        self._connected = asyncio.Event()
        self._acks: dict[int, asyncio.Future[int]] = {}
        self._ids = itertools.count(1)
        self._url_index = 0
        self._task: Optional[asyncio.Task[None]] = None
        self._closed = False

    # -- the application's side --------------------------------------------------------

    async def connect(self, timeout: Optional[float] = None) -> None:
        """Start (re)connecting in the background and wait until connected (at most ``timeout`` seconds).

        Raises ``asyncio.TimeoutError`` when no server answered in time (the client keeps trying).
        """
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        await asyncio.wait_for(self._connected.wait(), timeout)

    @property
    def connected(self) -> bool:
        return self._connection is not None

    def position(self, channel: str) -> tuple[Optional[str], Optional[int]]:
        """The (epoch, offset) of the last message of ``channel`` delivered."""
        state = self._channels[channel]
        return state.epoch, state.last

    async def subscribe(
        self,
        channel: str,
        *,
        since: Optional[int] = None,
        epoch: Optional[str] = None,
        presence: bool = False,
        info: Any = None,
    ) -> dict[str, Any]:
        """Subscribe to ``channel`` (from ``since`` of ``epoch`` if given); return the server's ``subscribed`` frame.

        The subscription is renewed on every reconnection. Raises
        :class:`ChannelsError` when the server refuses it (the channel is
        then forgotten).
        """
        if channel in self._channels:
            raise ValueError(f"already subscribed to {channel!r}")
        state = self._channels[channel] = _Channel(since, epoch, presence, info)
        self._send_subscribe(channel, state)
        try:
            return await state.ready
        except ChannelsError:
            if self._channels.get(channel) is state:
                del self._channels[channel]
            raise

    def unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel`` (no-op if not subscribed)."""
        if self._channels.pop(channel, None) is not None:
            self._send({"op": "unsubscribe", "channel": channel})

    async def publish(self, channel: str, data: Any, timeout: float = 10.0) -> int:
        """Publish ``data`` (JSON) to ``channel`` and return its offset once the server stored it.

        Waits (at most ``timeout`` seconds) for a connection first. Raises
        :class:`ChannelsError` when refused, :class:`ChannelsDisconnected`
        when the connection dropped first (it may or may not have been
        published), ``asyncio.TimeoutError`` after ``timeout``.
        """

        async def send() -> int:
            await self._connected.wait()
            request_id = next(self._ids)
            future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            self._acks[request_id] = future
            try:
                self._send({"op": "publish", "channel": channel, "data": data, "id": request_id})
                return await future
            finally:
                self._acks.pop(request_id, None)

        return await asyncio.wait_for(send(), timeout)

    def request_presence(self, channel: str) -> None:
        """Ask for ``channel``'s member list; it comes as a :class:`PresenceEvent` of kind ``"presence"``."""
        self._send({"op": "presence", "channel": channel})

    async def next_event(self, timeout: Optional[float] = None) -> Event:
        """The next message or event.

        Raises ``asyncio.TimeoutError`` after ``timeout``, and
        :class:`ChannelsDisconnected` once the client is closed and every event was taken.
        """
        if not self._events.empty():
            event = self._events.get_nowait()  # the common case under load: no timer, no task
        elif timeout is None:
            event = await self._events.get()
        else:
            event = await asyncio.wait_for(self._events.get(), timeout)
        if event is _CLOSED:
            self._events.put_nowait(_CLOSED)  # for the next caller too
            raise ChannelsDisconnected("the client is closed")
        return event

    def __aiter__(self) -> AsyncIterator[Event]:
        """Every message and event until :meth:`close`."""
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while True:
            try:
                yield await self.next_event()
            except ChannelsDisconnected:
                return

    def drop_connection(self) -> None:
        """Abort the current connection (as a network failure would); the client reconnects. For tests."""
        connection = self._connection
        if connection is not None and connection.ws_connection is not None:
            connection.ws_connection.abort()

    async def close(self) -> None:
        """Close the connection and stop reconnecting."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
        if self._events.maxsize == 0 or not self._events.full():
            self._events.put_nowait(_CLOSED)

    # -- the connection -------------------------------------------------------------------

    def _send(self, request: dict[str, Any]) -> None:
        connection = self._connection
        if connection is None:
            return  # sent again on reconnection (subscriptions) or waited for (publishes)
        try:
            connection.write_message(json.dumps(request))
        except WebSocketError:
            pass  # closing: the read loop notices

    def _send_subscribe(self, channel: str, state: _Channel) -> None:
        request: dict[str, Any] = {"op": "subscribe", "channel": channel}
        if state.last is not None:
            request["since"] = state.last
        if state.epoch is not None:
            request["epoch"] = state.epoch
        if state.presence:
            request["presence"] = True
            request["info"] = state.info
        self._send(request)

    def _backoff(self, attempt: int) -> float:
        delay = min(self.reconnect_max, self.reconnect_min * (2**attempt))
        return float(delay * (0.5 + random.random()))  # full jitter around the nominal delay

    async def _run(self) -> None:
        attempt = 0
        while not self._closed:
            url = self.urls[self._url_index % len(self.urls)]
            try:
                connection = await websocket_connect(
                    url,
                    connect_timeout=self.connect_timeout,
                    ping_interval=self.ping_interval,
                    ping_timeout=self.ping_timeout,
                    **self.connect_options,
                )
            except (OSError, WebSocketError, asyncio.TimeoutError) as exc:
                client_log.debug("cannot connect to %s: %s", url, exc)
                self._url_index += 1
                await asyncio.sleep(self._backoff(attempt))
                attempt += 1
                continue
            attempt = 0
            self.url = url
            self.connections += 1
            self._connection = connection
            self._connected.set()
            for channel, state in list(self._channels.items()):
                self._send_subscribe(channel, state)
            try:
                await self._read(connection)
            finally:
                self._connection = None
                self._connected.clear()
                for future in self._acks.values():
                    if not future.done():
                        future.set_exception(ChannelsDisconnected("the connection dropped before the answer"))
                connection.close()
            if self._closed:
                return
            self._url_index += 1
            await asyncio.sleep(self._backoff(0))

    async def _read(self, connection: WebSocketClientConnection) -> None:
        while True:
            message = await connection.read_message()
            if message is None:
                return
            if isinstance(message, bytes):
                continue
            for line in message.split("\n"):
                self._on_frame(json.loads(line))

    def _on_frame(self, frame: dict[str, Any]) -> None:
        op = frame.get("op")
        if op == "message":
            self._on_message(frame)
        elif op == "subscribed":
            self._on_subscribed(frame)
        elif op == "published":
            future = self._acks.get(frame.get("id", -1))
            if future is not None and not future.done():
                future.set_result(int(frame["offset"]))
        elif op == "error":
            self._on_error(frame)
        elif op in ("join", "leave"):
            self._emit(PresenceEvent(frame["channel"], op, member=frame.get("member")))
        elif op == "presence":
            self._emit(PresenceEvent(frame["channel"], "presence", members=frame.get("members", [])))

    def _emit(self, event: Event) -> None:
        try:
            self._events.put_nowait(event)
        except asyncio.QueueFull:
            client_log.warning("event queue full: dropping the connection to catch up later")
            self.drop_connection()

    def _on_subscribed(self, frame: dict[str, Any]) -> None:
        channel = frame["channel"]
        state = self._channels.get(channel)
        if state is None:
            return
        epoch, offset = frame["epoch"], int(frame["offset"])
        if state.last is None:
            state.last = offset  # live from here on
        elif not frame["recovered"] or (state.epoch is not None and state.epoch != epoch):
            self.recovery_failures += 1
            self._emit(RecoveryFailed(channel, epoch, state.epoch, offset))
            # What follows: the new history from its start, or what is left after our offset.
            state.last = 0 if (state.epoch is not None and state.epoch != epoch) else min(state.last, offset)
        state.epoch = epoch
        if not state.ready.done():
            state.ready.set_result(frame)

    def _on_message(self, frame: dict[str, Any]) -> None:
        channel = frame["channel"]
        state = self._channels.get(channel)
        if state is None:
            return
        offset, epoch = int(frame["offset"]), frame["epoch"]
        if epoch == state.epoch and state.last is not None and offset <= state.last:
            self.duplicates_dropped += 1
            return
        if state.epoch is not None and epoch != state.epoch:
            # The history was replaced while we were connected (Redis flushed): say so, then go on.
            self.recovery_failures += 1
            self._emit(RecoveryFailed(channel, epoch, state.epoch, offset - 1))
        state.epoch, state.last = epoch, offset
        self._emit(ChannelMessage(channel, offset, epoch, frame.get("data")))

    def _on_error(self, frame: dict[str, Any]) -> None:
        error = ChannelsError(str(frame.get("code")), str(frame.get("reason")))
        request_id = frame.get("id")
        if request_id is not None:
            future = self._acks.get(request_id)
            if future is not None and not future.done():
                future.set_exception(error)
            return
        channel = frame.get("channel")
        if not isinstance(channel, str) or channel not in self._channels:
            client_log.info("server error: %s", error)
            return
        state = self._channels[channel]
        if error.code == "unavailable":
            # The server's backend is down for now: ask again later on this connection.
            loop = asyncio.get_running_loop()
            loop.call_later(self._backoff(2), self._resubscribe_if_current, channel, state, self._connection)
            return
        if not state.ready.done():
            state.ready.set_exception(error)
        elif self._channels.get(channel) is state:
            del self._channels[channel]
            client_log.warning("subscription to %r refused on reconnection: %s", channel, error)

    def _resubscribe_if_current(self, channel: str, state: _Channel, connection: Any) -> None:
        if self._channels.get(channel) is state and self._connection is connection and connection is not None:
            self._send_subscribe(channel, state)
