"""Channels of WebSocket connections, with history, recovery and presence, in one process or many.

::

    hub = Hub()                                       # in-process, nothing to install
    hub = Hub(RedisBackend("redis://127.0.0.1:6379/0"))  # shared by several processes (channels_redis)

    class Chat(WebSocketHandler):
        def open(self):
            hub.subscribe("lobby", self)          # unsubscribed automatically on close
        async def on_message(self, message):
            offset = await hub.publish("lobby", message)

Every message published to a channel gets an *offset* (1, 2, 3... per
channel) in the channel's *epoch* (see :mod:`~tornado_websocket.channels_history`).
``hub.subscribe(channel, conn, since=offset, epoch=epoch)`` first sends what
the channel's history holds after ``since``, then live messages, with no gap
and no duplicate between the two: live messages that arrive while history is
read are held back, and those history already covered are dropped. Each
subscribed connection gets each message once, in offset order, through the
encode-once :func:`~tornado_websocket.broadcast.broadcast`.

What a subscriber receives is its :class:`Framing`'s: the message itself
(:data:`RAW`, the default) or, for :class:`~tornado_websocket.channels.ChannelsHandler`,
a JSON envelope with the channel, offset and epoch.

A slow consumer does not hold up the others: a connection with more than
``max_pending_bytes`` unsent is closed with ``slow_consumer_code`` (1013,
"try again later") instead of being written to (counted in
``STATS.slow_consumers_closed``); it may come back with ``since``.

A backend (:class:`~tornado_websocket.channels_memory.MemoryBackend` by
default, :class:`~tornado_websocket.channels_redis.RedisBackend`,
:class:`~tornado_websocket.channels_redis.RedisClusterBackend`) keeps the
history and presence and tells the hub (its :class:`Sink`) what arrives.
When its live delivery has a gap (a lost Redis connection), the hub reads
the channel's history from the last offset it delivered and goes on.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Awaitable, Optional, Protocol

from tornado_websocket.broadcast import broadcast
from tornado_websocket.channels_history import Data, Entry, HistorySettings, Recovery
from tornado_websocket.channels_memory import MemoryBackend
from tornado_websocket.connection import PreparedMessage, WebSocketConnection
from tornado_websocket.errors import WebSocketError
from tornado_websocket.frames import CloseCode
from tornado_websocket.metrics import STATS

hub_log = logging.getLogger("tornado_websocket.hub")

DEFAULT_MAX_PENDING_BYTES = 1024 * 1024

#: The hub's clock (seconds, monotonic): when the messages it keeps arrived, for the history's ``max_age``.
clock = time.monotonic

#: The old name of the in-process backend.
InProcessBackend = MemoryBackend


class HubUnavailableError(WebSocketError):
    """The backend cannot publish or read history right now (for example, Redis is down)."""


class Sink(Protocol):
    """What a backend tells its hub (the :class:`Hub` is one)."""

    def deliver(self, channel: str, epoch: str, offset: int, message: Data) -> None:
        """A message was published to ``channel`` (in offset order per channel)."""

    def presence_event(self, channel: str, kind: str, member_id: str, info: Any) -> None:
        """``kind`` is ``"join"`` or ``"leave"``."""

    def resync(self, channel: Optional[str] = None) -> None:
        """Live delivery of ``channel`` (every channel if None) may have missed messages: read history."""


class Backend(Protocol):
    """The storage and transport of a :class:`Hub`'s channels (see the module docstring)."""

    shared: bool

    def start(self, sink: Sink) -> None:
        """Attach to the hub: from now on what arrives goes to ``sink``."""

    def channel_added(self, channel: str) -> Awaitable[None]:
        """This process has its first subscriber of ``channel``: start its live delivery.

        The awaitable completes once delivery is on (a Redis subscription
        confirmed), and fails if it cannot be started.
        """

    def channel_removed(self, channel: str) -> None:
        """This process has no subscriber of ``channel`` left: live delivery may stop."""

    async def publish(self, channel: str, message: Data) -> int:
        """Store ``message`` in the channel's history and deliver it; return its offset.

        Raises :class:`HubUnavailableError` when the backend cannot confirm
        that it was stored (with Redis, one whose answer was lost may still
        have been stored: see docs/channels.md).
        """

    async def recover(self, channel: str, since: Optional[int], epoch: Optional[str]) -> Recovery:
        """What the channel's history holds after ``since`` in ``epoch`` (see :class:`Recovery`).

        Raises :class:`HubUnavailableError` when the history cannot be read.
        """

    async def join(self, channel: str, member_id: str, info: Any) -> None:
        """Add ``member_id`` (with ``info``) to the channel's presence; a join event goes to every process."""

    async def leave(self, channel: str, member_id: str) -> None:
        """Remove ``member_id`` from the channel's presence; a leave event goes to every process."""

    async def members(self, channel: str) -> dict[str, Any]:
        """The channel's present members, by id, with the info each joined with."""

    async def close(self) -> None:
        """Stop live delivery and presence, and release connections; the backend cannot be used after."""


class Framing:
    """What a subscriber receives for each event of a channel; this base sends the message itself and nothing else.

    Subclasses return the text (or bytes) to send, or ``None`` to send nothing.
    Each method is called once per event per process, not per subscriber.
    A framing with a ``joiner`` (say ``"\\n"``) has several events that leave
    at the same time joined into one WebSocket message with it.
    """

    joiner: Optional[str] = None

    def message(self, channel: str, epoch: str, offset: int, message: Data) -> Data:
        """What to send for a message published at ``offset``; the base sends ``message`` itself."""
        return message

    def subscribed(self, channel: str, recovery: Recovery) -> Optional[Data]:
        """What to send a new subscriber before its history and live messages; the base sends nothing."""
        return None

    def presence(self, channel: str, kind: str, member_id: str, info: Any) -> Optional[Data]:
        """What to send for a ``"join"`` or ``"leave"`` of ``member_id``; the base sends nothing."""
        return None

    def members(self, channel: str, members: dict[str, Any]) -> Optional[Data]:
        """What to send in answer to a request for the channel's members; the base sends nothing."""
        return None


#: The default framing: subscribers receive the published messages as they are.
RAW = Framing()


@dataclass(frozen=True)
class Subscription:
    """A completed subscription: the channel's ``epoch`` and latest ``offset`` when it started, whether everything
    after ``since`` followed (``recovered``), and how many messages came from history (``replayed``)."""

    channel: str
    epoch: str
    offset: int
    recovered: bool
    replayed: int


def _as_connection(target: Any) -> WebSocketConnection:
    connection = target if isinstance(target, WebSocketConnection) else getattr(target, "_connection", None)
    if not isinstance(connection, WebSocketConnection):
        raise TypeError(f"{type(target).__name__} is not an open WebSocket")
    return connection


#: At most this many events in one joined WebSocket message.
MAX_JOINED = 256


def _joined(framing: Framing, parts: list[Data]) -> list[Data]:
    """``parts`` as they leave: joined by the framing's joiner (in groups of MAX_JOINED), or one by one."""
    joiner = framing.joiner
    if joiner is None or len(parts) < 2:
        return parts
    texts = [part if isinstance(part, str) else part.decode("utf-8") for part in parts]
    return [joiner.join(texts[i : i + MAX_JOINED]) for i in range(0, len(texts), MAX_JOINED)]


def _send(connection: WebSocketConnection, data: Data) -> None:
    payload = data.encode("utf-8") if isinstance(data, str) else data
    connection.send_prepared(PreparedMessage(payload, type(data) is bytes))


class _Pending:
    """A subscriber reading history: live messages wait in ``buffer`` until it is done."""

    __slots__ = ("framing", "since", "epoch", "member", "buffer", "task")

    def __init__(
        self, framing: Framing, since: Optional[int], epoch: Optional[str], member: Optional[tuple[str, Any]]
    ) -> None:
        self.framing = framing
        self.since = since
        self.epoch = epoch
        self.member = member
        self.buffer: list[tuple[str, int, Data]] = []
        self.task: Optional[asyncio.Future[Optional[Subscription]]] = None


class _Channel:
    """This process's side of one channel."""

    __slots__ = (
        "name", "groups", "pending", "watchers", "members", "epoch", "last", "ready", "resync_buffer", "recent",
        "recent_at", "queued", "reading",
    )  # fmt: skip

    def __init__(self, name: str, ready: Awaitable[None]) -> None:
        self.name = name
        self.queued: list[tuple[str, int, Data]] = []  # delivered here, not yet sent to the live members
        self.groups: dict[Framing, set[WebSocketConnection]] = {}
        self.pending: dict[WebSocketConnection, _Pending] = {}
        self.watchers: dict[WebSocketConnection, Framing] = {}  # subscribers that get presence events
        self.members: dict[WebSocketConnection, str] = {}  # their member ids
        self.epoch: Optional[str] = None  # of the last message delivered here
        self.last = 0
        self.ready = asyncio.ensure_future(ready)
        self.resync_buffer: Optional[list[tuple[str, int, Data]]] = None
        # The last messages delivered here, consecutive offsets ending at `last` in `epoch`: recoveries
        # from within it need no backend read (everyone coming back after a blip asks for the same tail).
        self.recent: deque[Entry] = deque()
        self.recent_at: deque[float] = deque()  # when each of `recent` arrived here (monotonic)
        self.reading: Optional[asyncio.Future[None]] = None  # a history read in flight for a subscriber

    def remember(self, entries: list[Entry], limit: int, read_at: float) -> None:
        """Put history ``entries`` (of ``epoch``, consecutive, ending at or before ``last``) in front of ``recent``.

        Their age is not known here: they count as arrived at ``read_at``,
        the start of the read that returned them, which the backend answered
        within its ``max_age``.
        """
        if not entries or not limit:
            return
        recent = self.recent
        end = entries[-1][0]
        if recent and recent[0][0] == end + 1:
            older = entries[-(limit - len(recent)) :] if len(recent) < limit else []
            recent.extendleft(reversed(older))
            self.recent_at.extendleft(read_at for _ in older)
        elif not recent and end == self.last:
            newest = entries[-limit:]
            recent.extend(newest)
            self.recent_at.extend(read_at for _ in newest)

    def keep_recent(self, entry: Entry, limit: int, now: float) -> None:
        """Add a message delivered live to ``recent``, keeping at most ``limit``."""
        self.recent.append(entry)
        self.recent_at.append(now)
        if len(self.recent) > limit:
            self.recent.popleft()
            self.recent_at.popleft()

    def forget_recent(self) -> None:
        self.recent.clear()
        self.recent_at.clear()

    def expire_recent(self, oldest: float) -> None:
        """Drop from ``recent`` what arrived before ``oldest`` (the history's ``max_age`` applies here too)."""
        recent, recent_at = self.recent, self.recent_at
        while recent_at and recent_at[0] < oldest:
            recent.popleft()
            recent_at.popleft()

    def recover_locally(self, since: Optional[int], epoch: Optional[str]) -> Optional[Recovery]:
        """The recovery of ``since`` from ``recent`` alone, or None if it needs the backend."""
        if since is None or self.epoch is None or self.resync_buffer is not None:
            return None
        if epoch is not None and epoch != self.epoch:
            return None
        if since == self.last:
            return Recovery(self.epoch, self.last, [], True)
        recent = self.recent
        if not recent or since < recent[0][0] - 1 or since > self.last:
            return None
        start = since + 1 - recent[0][0]
        return Recovery(self.epoch, self.last, list(itertools.islice(recent, start, None)), True)

    def live(self, connection: WebSocketConnection) -> bool:
        return any(connection in members for members in self.groups.values())


class Hub:
    """Channels of WebSocket connections; see the module docstring.

    ``backend`` is a :class:`~tornado_websocket.channels_memory.MemoryBackend`
    (the default) or a Redis backend of :mod:`~tornado_websocket.channels_redis`.
    A subscription whose live delivery does not start within
    ``subscribe_timeout`` seconds (Redis is down) fails with :class:`HubUnavailableError`.
    The hub keeps the last ``recent_size`` messages it delivered per channel,
    so that subscribers coming back within them are answered without reading
    the backend's history; never more, nor older ones, than the backend's
    ``history_settings`` keep.
    """

    def __init__(
        self,
        backend: Optional[Backend] = None,
        *,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        slow_consumer_code: int = CloseCode.TRY_AGAIN_LATER,
        subscribe_timeout: float = 5.0,
        recent_size: int = 1000,
    ) -> None:
        self.backend: Any = backend if backend is not None else MemoryBackend()
        self.subscribe_timeout = subscribe_timeout
        # What the cache answers stays within what the backend's history would: as many, as old.
        history: Optional[HistorySettings] = getattr(self.backend, "history_settings", None)
        self.recent_size = recent_size if history is None else min(recent_size, history.max_count)
        self._recent_max_age = None if history is None else history.max_age
        self.max_pending_bytes = max_pending_bytes
        self.slow_consumer_code = slow_consumer_code
        self._channels: dict[str, _Channel] = {}
        self._subscriptions: dict[WebSocketConnection, set[str]] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        self._dirty: list[_Channel] = []  # channels with queued messages, sent at the end of the loop turn
        self.backend.start(self)

    # -- subscribing ---------------------------------------------------------------

    def subscribe(
        self,
        channel: str,
        target: Any,
        since: Optional[int] = None,
        *,
        epoch: Optional[str] = None,
        framing: Framing = RAW,
        member: Optional[tuple[str, Any]] = None,
    ) -> asyncio.Future[Optional[Subscription]]:
        """Subscribe a connection (handler, client or ``WebSocketConnection``) to ``channel``.

        With ``since`` (an offset of ``epoch``), what history holds after it
        is sent first; then live messages. ``member`` (an id and any JSON
        value) lists the connection in the channel's presence and sends it
        presence events. Returns a future of the :class:`Subscription` once
        history is sent and live delivery started (``None`` if the connection
        closed or unsubscribed first); it may be ignored. It raises
        :class:`HubUnavailableError` when the backend cannot read history
        (the connection is then not subscribed). Subscribing again while
        subscribed changes nothing. Raises ``TypeError`` for something that
        is not a WebSocket.
        """
        connection = _as_connection(target)
        loop = asyncio.get_running_loop()
        if connection.closed:
            # The peer left (say, while on_message awaited): nothing to deliver to.
            done: asyncio.Future[Optional[Subscription]] = loop.create_future()
            done.set_result(None)
            return done
        state = self._channels.get(channel)
        if state is None:
            state = self._channels[channel] = _Channel(channel, self.backend.channel_added(channel))
        pending = state.pending.get(connection)
        if pending is not None and pending.task is not None:
            return pending.task
        if state.live(connection):
            done = loop.create_future()
            done.set_result(Subscription(channel, state.epoch or "", state.last, True, 0))
            return done
        channels = self._subscriptions.get(connection)
        if channels is None:
            channels = self._subscriptions[connection] = set()
            connection.add_close_callback(self._forget)
        channels.add(channel)
        pending = state.pending[connection] = _Pending(framing, since, epoch, member)
        task = pending.task = asyncio.ensure_future(self._catch_up(channel, state, connection, pending))
        return task

    async def _catch_up(
        self, channel: str, state: _Channel, connection: WebSocketConnection, pending: _Pending
    ) -> Optional[Subscription]:
        """Read history for a new subscriber, then send it, its held-back live messages, and make it live."""
        try:
            if not state.ready.done():
                try:
                    await asyncio.wait_for(asyncio.shield(state.ready), self.subscribe_timeout)
                except asyncio.TimeoutError:
                    raise HubUnavailableError(
                        f"live delivery of {channel!r} did not start in {self.subscribe_timeout} s"
                    )
            else:
                state.ready.result()
            recovery = self._recover_locally(state, pending)
            if recovery is None and state.reading is not None:
                # Another subscriber is reading this channel's history: what it reads may answer us too.
                await asyncio.shield(state.reading)
                recovery = self._recover_locally(state, pending)
            if recovery is None:
                recovery = await self._read_history(channel, state, pending)
            members = await self.backend.members(channel) if pending.member is not None else None
        except BaseException:
            if state.pending.get(connection) is pending:
                self._leave(channel, connection)
                channels = self._subscriptions.get(connection)
                if channels is not None:
                    channels.discard(channel)
            raise
        if state.pending.get(connection) is not pending or connection.is_closing():
            return None  # unsubscribed or closed meanwhile
        del state.pending[connection]
        if pending.since is None:
            # Live from the subscription on: the offset is the one before the first held-back message.
            first = next((offset for epoch, offset, _ in pending.buffer if epoch == recovery.epoch), None)
            if first is not None and first - 1 < recovery.offset:
                recovery = Recovery(recovery.epoch, first - 1, [], True)
        self._flush(state)  # the live members get what is queued; the newcomer has it in its buffer
        framing = pending.framing
        parts: list[Data] = []
        head = framing.subscribed(channel, recovery)
        if head is not None:
            parts.append(head)
        if members is not None:
            listing = framing.members(channel, members)
            if listing is not None:
                parts.append(listing)
        for offset, message in recovery.entries:
            parts.append(framing.message(channel, recovery.epoch, offset, message))
        covered = recovery.offset if pending.since is not None else -1
        for epoch, offset, message in pending.buffer:
            if epoch == recovery.epoch and offset <= covered:
                continue  # history had it
            parts.append(framing.message(channel, epoch, offset, message))
        for data in _joined(framing, parts):
            _send(connection, data)
        state.groups.setdefault(framing, set()).add(connection)
        if pending.member is not None:
            member_id, info = pending.member
            state.watchers[connection] = framing
            state.members[connection] = member_id
            self._spawn(self.backend.join(channel, member_id, info))
        return Subscription(channel, recovery.epoch, recovery.offset, recovery.recovered, len(recovery.entries))

    def _recover_locally(self, state: _Channel, pending: _Pending) -> Optional[Recovery]:
        if self._recent_max_age is not None:
            state.expire_recent(clock() - self._recent_max_age)
        return state.recover_locally(pending.since, pending.epoch)

    async def _read_history(self, channel: str, state: _Channel, pending: _Pending) -> Recovery:
        """Ask the backend; what it answers becomes the channel's position and recent messages here."""
        reading: Optional[asyncio.Future[None]] = None
        if state.reading is None:
            reading = state.reading = asyncio.get_running_loop().create_future()
        try:
            read_at = clock()
            recovery: Recovery = await self.backend.recover(channel, pending.since, pending.epoch)
            if state.epoch is None:
                # Nothing arrived live since live delivery started: the channel is at recovery.offset.
                state.epoch, state.last = recovery.epoch, max(state.last, recovery.offset)
                if recovery.recovered and state.last == recovery.offset:
                    state.remember(recovery.entries, self.recent_size, read_at)
            elif recovery.epoch == state.epoch and recovery.recovered:
                state.remember(recovery.entries, self.recent_size, read_at)
            return recovery
        finally:
            if reading is not None:
                state.reading = None
                reading.set_result(None)

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
        state = self._channels.get(channel)
        if state is None:
            return
        state.pending.pop(connection, None)
        for framing, members in list(state.groups.items()):
            members.discard(connection)
            if not members:
                del state.groups[framing]
        state.watchers.pop(connection, None)
        member_id = state.members.pop(connection, None)
        if member_id is not None:
            self._spawn(self.backend.leave(channel, member_id))
        if not state.groups and not state.pending:
            del self._channels[channel]
            self.backend.channel_removed(channel)

    def subscribers(self, channel: str) -> int:
        """How many connections of this process are subscribed to ``channel`` (reading history or live)."""
        state = self._channels.get(channel)
        if state is None:
            return 0
        return len(state.pending) + sum(len(members) for members in state.groups.values())

    def channels(self, target: Any) -> set[str]:
        """The channels a connection is subscribed to here."""
        return set(self._subscriptions.get(_as_connection(target), ()))

    # -- publishing ------------------------------------------------------------------

    async def publish(self, channel: str, message: Data) -> int:
        """Send ``message`` (``str`` as text, ``bytes`` as binary) to ``channel``'s subscribers; return its offset.

        With a Redis backend, subscribers in every process get it. Raises
        :class:`HubUnavailableError` when the backend cannot take it, and
        ``TypeError`` for anything but ``str`` or ``bytes``.
        """
        if not isinstance(message, (str, bytes)):
            raise TypeError(f"cannot publish {type(message).__name__}; publish str or bytes")
        offset: int = await self.backend.publish(channel, message)
        return offset

    async def members(self, channel: str) -> dict[str, Any]:
        """The channel's presence, in every process: member id to info. Raises :class:`HubUnavailableError`."""
        members: dict[str, Any] = await self.backend.members(channel)
        return members

    # -- the Sink: what the backend tells us -------------------------------------------

    def deliver(self, channel: str, epoch: str, offset: int, message: Data) -> None:
        """Fan one message out to this process's subscribers (see :class:`Sink`)."""
        state = self._channels.get(channel)
        if state is None:
            return
        if state.resync_buffer is not None:
            state.resync_buffer.append((epoch, offset, message))
            return
        if state.epoch == epoch and offset > state.last + 1:
            hub_log.info("gap on %r: offset %d after %d; reading history", channel, offset, state.last)
            state.resync_buffer = [(epoch, offset, message)]
            self._spawn(self._resync(channel, state))
            return
        self._dispatch(channel, state, epoch, offset, message)

    def _dispatch(self, channel: str, state: _Channel, epoch: str, offset: int, message: Data) -> None:
        if state.epoch == epoch:
            if offset <= state.last:
                return  # delivered already (history read after a reconnect overlaps the live stream)
            if offset != state.last + 1:
                state.forget_recent()  # a gap history could not fill: only consecutive offsets are kept
        else:
            state.epoch = epoch  # a new history (or the first message here)
            state.forget_recent()
        state.last = offset
        if self.recent_size:
            state.keep_recent((offset, message), self.recent_size, clock())
        for pending in state.pending.values():
            pending.buffer.append((epoch, offset, message))
        if state.groups:
            if not state.queued:
                self._dirty.append(state)
                if len(self._dirty) == 1:
                    asyncio.get_running_loop().call_soon(self._flush_dirty)
            state.queued.append((epoch, offset, message))
            if len(state.queued) >= MAX_JOINED:
                self._flush(state)  # a publisher that does not yield: keep the queue (and delay) bounded

    def _flush_dirty(self) -> None:
        dirty, self._dirty = self._dirty, []
        for state in dirty:
            self._flush(state)

    def _flush(self, state: _Channel) -> None:
        """Send the channel's queued messages to its live members: what arrived in one loop turn leaves together."""
        events = state.queued
        if not events:
            return
        state.queued = []
        channel = state.name
        for framing, members in state.groups.items():
            parts = [framing.message(channel, epoch, offset, message) for epoch, offset, message in events]
            for data in _joined(framing, parts):
                self._fan_out(channel, members, data)

    def _fan_out(self, channel: str, members: set[WebSocketConnection], data: Data) -> None:
        """Send ``data`` to ``members``; close the ones that fall behind."""
        limit = self.max_pending_bytes
        keep = []
        for connection in members:
            if connection.is_closing():
                continue
            pending = connection.write_buffer_size
            if pending > limit:
                hub_log.info("closing a slow consumer on %r: %d bytes unsent, over %d", channel, pending, limit)
                STATS.slow_consumers_closed += 1
                connection.close(self.slow_consumer_code, "slow consumer")
                continue
            keep.append(connection)
        broadcast(keep, data, binary=isinstance(data, bytes))

    def resync(self, channel: Optional[str] = None) -> None:
        """Read history from the last offset delivered here, for ``channel`` or every channel (see :class:`Sink`)."""
        names = [channel] if channel is not None else list(self._channels)
        for name in names:
            state = self._channels.get(name)
            if state is not None and state.resync_buffer is None and state.epoch is not None:
                state.resync_buffer = []
                self._spawn(self._resync(name, state))

    async def _resync(self, channel: str, state: _Channel) -> None:
        entries: list[tuple[str, int, Data]] = []
        try:
            recovery = await self.backend.recover(channel, state.last, state.epoch)
            entries = [(recovery.epoch, offset, message) for offset, message in recovery.entries]
            if not recovery.recovered:
                hub_log.warning("channel %r: history after offset %d is incomplete", channel, state.last)
        except Exception as exc:
            hub_log.warning("channel %r: could not read history after a gap: %s", channel, exc)
        finally:
            held = state.resync_buffer or []
            state.resync_buffer = None
            # Best effort: what could not be recovered is not asked for again.
            for epoch, offset, message in entries + held:
                self._dispatch(channel, state, epoch, offset, message)

    def presence_event(self, channel: str, kind: str, member_id: str, info: Any) -> None:
        """Send a join or leave to the channel's presence watchers here (see :class:`Sink`)."""
        state = self._channels.get(channel)
        if state is None or not state.watchers:
            return
        self._flush(state)  # messages delivered before the event leave before it
        encoded: dict[Framing, Optional[Data]] = {}
        for connection, framing in state.watchers.items():
            if framing not in encoded:
                encoded[framing] = framing.presence(channel, kind, member_id, info)
            data = encoded[framing]
            if data is not None and not connection.is_closing():
                _send(connection, data)

    # -- the rest ------------------------------------------------------------------------

    def _spawn(self, awaitable: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(awaitable)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            hub_log.warning("hub background task failed: %s", task.exception())

    async def close(self) -> None:
        """Stop the backend (connections are left open)."""
        for task in list(self._tasks):
            task.cancel()
        await self.backend.close()


def __getattr__(name: str) -> Any:
    # RedisBackend lives in channels_redis (it needs the redis extra); the old import path keeps working.
    if name in ("RedisBackend", "RedisClusterBackend"):
        import importlib

        return getattr(importlib.import_module("tornado_websocket.channels_redis"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
