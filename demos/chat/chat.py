"""The chat demo: rooms, nicknames, history and presence on tornado_websocket's Hub.

Run ``python demos/chat/chat.py`` and open http://localhost:8888/ (add
``?room=NAME`` for another room). One process keeps history and presence in
memory. Several processes share rooms through Redis::

    python demos/chat/chat.py --port 8001 --redis redis://127.0.0.1:6379/0
    python demos/chat/chat.py --port 8002 --redis redis://127.0.0.1:6379/0

Messages go through :class:`tornado_websocket.hub.Hub` (in-process, or Redis
pub/sub); the last 50 messages of a room are a Redis list (``LPUSH`` +
``LTRIM``) and who is online a Redis sorted set of nickname -> last seen,
refreshed by each process's heartbeat, so the users of a process that died
disappear after ``--presence-ttl`` seconds.

The protocol is JSON over the WebSocket at ``/ws?room=NAME``; every message
is an object with a ``type``:

client -> server
    ``{"type": "hello", "nick": "alice"}`` first (within 10 s), then
    ``{"type": "message", "text": "..."}`` and ``{"type": "nick", "nick": "bob"}``.
server -> client
    ``hello`` (``nick`` as granted, ``room``, ``limits``), ``history``
    (``messages``, oldest first), ``message`` (``id``, ``nick``, ``text``,
    ``ts`` in ms), ``presence`` (``users``, and ``rev``: ignore a presence
    older than the last one seen), ``nick`` (the name granted after a
    change) and ``error`` (``code``, ``message``).

Limits: a message over ``--max-length`` characters is refused with an
error and not broadcast; each connection may send ``--rate`` messages per
second with bursts of ``--burst`` (a token bucket), excess ones are refused
with an error, and a connection that keeps being refused is closed with
1008 (policy violation).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import re
import secrets
import time
import unicodedata
from collections import deque
from collections.abc import AsyncIterator, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Optional, Protocol, Union

import tornado.web
from tornado.ioloop import IOLoop

import tornado_websocket
from tornado_websocket.errors import WebSocketClosedError
from tornado_websocket.frames import CloseCode
from tornado_websocket.hub import Hub, HubUnavailableError, RedisBackend

log = logging.getLogger("chat")

STATIC_DIR = Path(__file__).resolve().parent / "static"

HISTORY_SIZE = 50
MAX_NICK_LENGTH = 24
MAX_RAW_NICK = 200  # characters of a requested nickname looked at before sanitizing
DEFAULT_ROOM = "lobby"
ROOM_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
HELLO_TIMEOUT = 10.0  # seconds a new connection has to say hello
SUBSCRIBE_TIMEOUT = 5.0  # seconds to wait for the Hub to confirm a room subscription
MAX_FRAME_BYTES = 64 * 1024  # a WebSocket message over this is a protocol-level error (1009)
PING_INTERVAL = 25.0
# C0/C1 controls except tab and newline, and the bidirectional overrides/isolates,
# removed from message text (it is displayed with textContent, so this is about
# readability, not injection).
TEXT_CONTROLS_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


# -- pure helpers ----------------------------------------------------------------


def dumps(obj: Any) -> str:
    """Compact JSON text (non-ASCII kept as is)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def sanitize_nick(raw: object) -> str:
    """Return a displayable nickname from what a client asked for ("" when nothing is left).

    NFC-normalized, every control, format (zero-width, bidi), private-use,
    surrogate and unassigned character removed, whitespace runs collapsed to
    one space, at most ``MAX_NICK_LENGTH`` characters.
    """
    if not isinstance(raw, str):
        return ""
    text = unicodedata.normalize("NFC", raw[:MAX_RAW_NICK])
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("C"))
    text = " ".join(text.split())
    return text[:MAX_NICK_LENGTH].strip()


def nick_candidates(base: str) -> list[str]:
    """Names to try, in order, for someone who asked for ``base``: ``base``, ``base-2`` .. ``base-9``, random.

    Every candidate is at most ``MAX_NICK_LENGTH`` characters (``base`` is
    cut to make room for the suffix).
    """
    if not base:
        base = "guest"
    suffixes = [""] + [f"-{n}" for n in range(2, 10)] + ["-" + secrets.token_hex(3) for _ in range(3)]
    candidates: list[str] = []
    for suffix in suffixes:
        candidate = base[: MAX_NICK_LENGTH - len(suffix)].rstrip() + suffix
        if candidate not in candidates:
            candidates.append(candidate)
    return candidates


def clean_text(text: str) -> str:
    """Message text as stored: CRLF -> LF, control characters removed, outer whitespace stripped."""
    return TEXT_CONTROLS_RE.sub("", text.replace("\r\n", "\n").replace("\r", "\n")).strip()


class TokenBucket:
    """``rate`` tokens per second, at most ``capacity`` saved up; starts full."""

    def __init__(self, rate: float, capacity: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self._tokens = capacity
        self._updated = time.monotonic()

    def take(self) -> bool:
        """Spend one token if there is one; False (and nothing spent) otherwise."""
        now = time.monotonic()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


@dataclass(frozen=True)
class Limits:
    """What one connection may send."""

    max_length: int = 2000  # characters of one message
    rate: float = 5.0  # messages per second, sustained
    burst: int = 10  # messages in a burst
    # Refused messages a connection may send (this many at once, ``strike_rate``
    # per second sustained) before it is closed with 1008.
    strikes: int = 10
    strike_rate: float = 0.5


# -- storage: history and presence ---------------------------------------------------


class Presence(NamedTuple):
    """Who is online in a room. ``rev`` grows with every snapshot, so clients can drop stale ones."""

    rev: int
    users: list[str]


def _sorted_users(nicks: Iterable[str]) -> list[str]:
    return sorted(nicks, key=lambda n: (n.casefold(), n))


class StoreUnavailableError(Exception):
    """The store (Redis) cannot be reached; the operation did not happen."""


class ChatStore(Protocol):
    """Room history and presence; :class:`MemoryStore` or :class:`RedisStore`."""

    async def add_message(self, room: str, record: str) -> None:
        """Append a message (JSON text) to the room's history, keeping the last ``HISTORY_SIZE``."""

    async def remove_message(self, room: str, record: str) -> None:
        """Take back a message added by :meth:`add_message` (it could not be broadcast)."""

    async def history(self, room: str) -> list[str]:
        """The room's last messages (JSON texts), oldest first."""

    async def join(self, room: str, candidates: Sequence[str]) -> tuple[str, Presence]:
        """Claim the first free nickname of ``candidates``; return it and the room's presence."""

    async def rename(self, room: str, old: str, candidates: Sequence[str]) -> tuple[str, Presence]:
        """Move ``old`` to the first free (or already ours) name of ``candidates``."""

    async def leave(self, room: str, nicks: Sequence[str]) -> Presence:
        """Release nicknames; return the room's presence."""

    async def heartbeat(self, room: str, nicks: Sequence[str]) -> Presence:
        """Mark ``nicks`` as still here, forget those not seen for the TTL; return the presence."""

    async def close(self) -> None:
        """Release connections."""


class MemoryStore:
    """History and presence of a single process."""

    def __init__(self, presence_ttl: float) -> None:
        self.presence_ttl = presence_ttl
        self._history: dict[str, deque[str]] = {}
        self._presence: dict[str, dict[str, float]] = {}
        self._revs = itertools.count(1)

    def _snapshot(self, room: str) -> Presence:
        return Presence(next(self._revs), _sorted_users(self._presence.get(room, {})))

    def _members(self, room: str) -> dict[str, float]:
        members = self._presence.setdefault(room, {})
        stale = time.time() - self.presence_ttl
        for nick in [n for n, seen in members.items() if seen < stale]:
            del members[nick]
        return members

    async def add_message(self, room: str, record: str) -> None:
        self._history.setdefault(room, deque(maxlen=HISTORY_SIZE)).append(record)

    async def remove_message(self, room: str, record: str) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._history[room].remove(record)

    async def history(self, room: str) -> list[str]:
        return list(self._history.get(room, ()))

    async def join(self, room: str, candidates: Sequence[str]) -> tuple[str, Presence]:
        members = self._members(room)
        nick = next((c for c in candidates if c not in members), None)
        if nick is None:
            raise StoreUnavailableError("no free nickname")
        members[nick] = time.time()
        return nick, self._snapshot(room)

    async def rename(self, room: str, old: str, candidates: Sequence[str]) -> tuple[str, Presence]:
        members = self._members(room)
        nick = next((c for c in candidates if c == old or c not in members), None)
        if nick is None:
            raise StoreUnavailableError("no free nickname")
        members.pop(old, None)
        members[nick] = time.time()
        return nick, self._snapshot(room)

    async def leave(self, room: str, nicks: Sequence[str]) -> Presence:
        members = self._members(room)
        for nick in nicks:
            members.pop(nick, None)
        if not members:
            self._presence.pop(room, None)
        return self._snapshot(room)

    async def heartbeat(self, room: str, nicks: Sequence[str]) -> Presence:
        members = self._members(room)
        now = time.time()
        for nick in nicks:
            members[nick] = now
        return self._snapshot(room)

    async def close(self) -> None:
        pass


class RedisStore:
    """History and presence shared by every process through Redis.

    Keys (``prefix`` + room): ``:history`` is a list, newest first, trimmed to
    ``HISTORY_SIZE``; ``:presence`` a sorted set of nickname -> last seen
    (Unix time of the process that saw it: processes need reasonably synced
    clocks), expiring as a whole ``2 * presence_ttl`` after the last
    heartbeat. A presence's ``rev`` is Redis's clock in microseconds, read in
    the same transaction as the members, so a later snapshot has a larger
    ``rev`` whichever process took it, across Redis restarts too.
    """

    def __init__(self, url: str, presence_ttl: float, *, prefix: str = "chat:") -> None:
        import redis.asyncio  # optional: only needed with --redis
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialBackoff

        self._errors_caught = (OSError, redis.RedisError)
        self.presence_ttl = presence_ttl
        self.prefix = prefix
        # Fail fast while Redis is down (the client is told, the heartbeat retries),
        # instead of redis-py's default retries of several seconds.
        self._redis: Any = redis.asyncio.from_url(
            url,
            decode_responses=True,
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        )

    @contextlib.asynccontextmanager
    async def _redis_errors(self) -> AsyncIterator[None]:
        try:
            yield
        except self._errors_caught as exc:
            raise StoreUnavailableError(f"Redis is unavailable: {exc}") from exc

    def _key(self, room: str, kind: str) -> str:
        return f"{self.prefix}{room}:{kind}"

    async def add_message(self, room: str, record: str) -> None:
        key = self._key(room, "history")
        async with self._redis_errors():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.lpush(key, record)
                pipe.ltrim(key, 0, HISTORY_SIZE - 1)
                await pipe.execute()

    async def remove_message(self, room: str, record: str) -> None:
        async with self._redis_errors():
            await self._redis.lrem(self._key(room, "history"), 1, record)

    async def history(self, room: str) -> list[str]:
        async with self._redis_errors():
            newest_first: list[str] = await self._redis.lrange(self._key(room, "history"), 0, HISTORY_SIZE - 1)
        return newest_first[::-1]

    async def _claim(self, key: str, candidates: Sequence[str], old: Optional[str]) -> str:
        """ZADD NX the first free candidate (``old``, if among them, counts as free)."""
        now = time.time()
        await self._redis.zremrangebyscore(key, "-inf", now - self.presence_ttl)
        for nick in candidates:
            if nick == old:
                await self._redis.zadd(key, {nick: now})
                return nick
            if await self._redis.zadd(key, {nick: now}, nx=True):
                return nick
        raise StoreUnavailableError("no free nickname")

    async def _snapshot(self, key: str, refresh: Sequence[str] = ()) -> Presence:
        """Optionally refresh ``refresh`` and prune, then read the members, atomically."""
        now = time.time()
        async with self._redis.pipeline(transaction=True) as pipe:
            if refresh:
                pipe.zadd(key, {nick: now for nick in refresh})
            pipe.zremrangebyscore(key, "-inf", now - self.presence_ttl)
            pipe.expire(key, max(1, int(2 * self.presence_ttl)))
            pipe.time()
            pipe.zrange(key, 0, -1)
            results = await pipe.execute()
        seconds, micros = results[-2]
        return Presence(int(seconds) * 1_000_000 + int(micros), _sorted_users(results[-1]))

    async def join(self, room: str, candidates: Sequence[str]) -> tuple[str, Presence]:
        key = self._key(room, "presence")
        async with self._redis_errors():
            nick = await self._claim(key, candidates, None)
            return nick, await self._snapshot(key)

    async def rename(self, room: str, old: str, candidates: Sequence[str]) -> tuple[str, Presence]:
        key = self._key(room, "presence")
        async with self._redis_errors():
            nick = await self._claim(key, candidates, old)
            if nick != old:
                await self._redis.zrem(key, old)
            return nick, await self._snapshot(key)

    async def leave(self, room: str, nicks: Sequence[str]) -> Presence:
        key = self._key(room, "presence")
        async with self._redis_errors():
            if nicks:
                await self._redis.zrem(key, *nicks)
            return await self._snapshot(key)

    async def heartbeat(self, room: str, nicks: Sequence[str]) -> Presence:
        async with self._redis_errors():
            return await self._snapshot(self._key(room, "presence"), nicks)

    async def close(self) -> None:
        await self._redis.aclose()


# -- the chat service: rooms of this process ------------------------------------------


class ChatService:
    """This process's side of the chat: its connections per room, presence announcements, the heartbeat."""

    def __init__(self, hub: Hub, store: ChatStore, limits: Limits, presence_ttl: float) -> None:
        self.hub = hub
        self.store = store
        self.limits = limits
        self.presence_ttl = presence_ttl
        self.rooms: dict[str, set[ChatSocket]] = {}
        self._last_users: dict[str, list[str]] = {}  # the presence this process last announced, per room
        self._tasks: set[asyncio.Task[Any]] = set()
        self._heartbeat_task: Optional[asyncio.Task[None]] = None
        self._store_down = False

    @staticmethod
    def channel(room: str) -> str:
        return f"room:{room}"

    def start(self) -> None:
        self._heartbeat_task = asyncio.ensure_future(self._heartbeat())

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` in the background; its errors are logged."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    def add(self, socket: ChatSocket) -> None:
        self.rooms.setdefault(socket.room, set()).add(socket)

    def discard(self, socket: ChatSocket) -> None:
        members = self.rooms.get(socket.room)
        if members is not None:
            members.discard(socket)
            if not members:
                del self.rooms[socket.room]

    async def publish(self, room: str, message: str) -> None:
        """Publish ``message`` to the room in every process; raises ``HubUnavailableError``."""
        await self.hub.publish(self.channel(room), message)

    async def announce(self, room: str, presence: Presence) -> None:
        """Tell every connection of the room, in every process, who is online.

        If the Hub cannot publish, the heartbeat tries again (it announces
        whenever the presence differs from the last one announced).
        """
        try:
            await self.publish(room, dumps(presence_message(presence)))
        except HubUnavailableError as exc:
            log.warning("presence of %r not announced: %s", room, exc)
            return
        self._last_users[room] = presence.users

    async def leave(self, room: str, nick: str) -> None:
        try:
            presence = await self.store.leave(room, [nick])
        except StoreUnavailableError as exc:
            log.warning("%r left %r while the store is down (the TTL will expire it): %s", nick, room, exc)
            return
        await self.announce(room, presence)

    async def _heartbeat(self) -> None:
        """Every third of the TTL: refresh our users, prune dead ones, announce changes.

        Once per TTL the presence is also sent to this process's own
        connections, so that one that missed an announcement (Redis was
        restarting, say) is right again within the TTL.
        """
        interval = max(self.presence_ttl / 3.0, 0.2)
        for beat in itertools.count(1):
            await asyncio.sleep(interval)
            try:
                await self._beat(resync=beat % 3 == 0)
            except Exception:
                log.exception("heartbeat failed")  # a bug: keep beating anyway

    async def _beat(self, resync: bool) -> None:
        for room, sockets in list(self.rooms.items()):
            nicks = [s.nick for s in sockets if s.nick is not None]
            try:
                presence = await self.store.heartbeat(room, nicks)
            except StoreUnavailableError as exc:
                if not self._store_down:
                    log.warning("heartbeat failed, will retry: %s", exc)
                self._store_down = True
                return
            if self._store_down:
                log.warning("the store is back")
                self._store_down = False
            if presence.users != self._last_users.get(room):
                await self.announce(room, presence)
            elif resync:
                tornado_websocket.broadcast(list(sockets), dumps(presence_message(presence)))
        for room in [r for r in self._last_users if r not in self.rooms]:
            del self._last_users[room]

    async def close(self, timeout: float = 5.0) -> None:
        """After the connections closed: let their goodbyes finish (bounded), then stop."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat_task
        await self.hub.close()
        await self.store.close()


def presence_message(presence: Presence) -> dict[str, Any]:
    return {"type": "presence", "rev": presence.rev, "users": presence.users}


def error_message(code: str, text: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": text}


# -- the WebSocket handler -------------------------------------------------------------


class ChatSocket(tornado_websocket.WebSocketHandler):
    """One chat connection: ``/ws?room=NAME``."""

    def initialize(self, chat: ChatService) -> None:
        self.chat = chat
        self.room = DEFAULT_ROOM
        self.nick: Optional[str] = None
        self._bucket = TokenBucket(chat.limits.rate, chat.limits.burst)
        self._strikes = TokenBucket(chat.limits.strike_rate, chat.limits.strikes)
        self._hello_timer: Optional[object] = None

    def prepare(self) -> None:
        room = self.get_query_argument("room", DEFAULT_ROOM)
        if not ROOM_RE.fullmatch(room):
            raise tornado.web.HTTPError(400, "room names are 1-32 letters, digits, '_' or '-'")
        self.room = room

    @property
    def max_message_size(self) -> int:
        return MAX_FRAME_BYTES

    def open(self) -> None:
        self._hello_timer = IOLoop.current().call_later(HELLO_TIMEOUT, self._hello_timed_out)

    def _hello_timed_out(self) -> None:
        self._hello_timer = None
        if self.nick is None:
            self.close(CloseCode.POLICY_VIOLATION, "no hello")

    @property
    def is_closing(self) -> bool:
        connection = self.ws_connection
        return connection is None or connection.is_closing()

    def send(self, message: Union[str, dict[str, Any]]) -> None:
        """Send a message (dict as JSON); dropped without error once the connection is closing."""
        if self.is_closing:
            return
        with contextlib.suppress(WebSocketClosedError):
            self.write_message(message if isinstance(message, str) else dumps(message))

    def refuse(self, code: str, text: str) -> None:
        """Send an error for a refused message; close with 1008 once the connection has too many strikes."""
        self.send(error_message(code, text))
        if not self._strikes.take():
            log.info("closing %s in %r: too many refused messages", self.nick, self.room)
            self.close(CloseCode.POLICY_VIOLATION, "too many refused messages")

    async def on_message(self, message: Union[str, bytes]) -> None:
        if self.is_closing:
            return  # arrived after our Close
        try:
            data = json.loads(message) if isinstance(message, str) else None
        except ValueError:
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            self.refuse("invalid", "send JSON objects with a type")
            return
        kind = data["type"]
        if kind in ("hello", "nick"):
            if self.nick is None:
                await self._hello(data.get("nick"))
            else:
                await self._rename(data.get("nick"))
        elif kind == "message":
            await self._message(data.get("text"))
        else:
            self.refuse("invalid", f"unknown message type {kind[:40]!r}")

    async def _hello(self, requested: object) -> None:
        chat = self.chat
        try:
            nick, presence = await chat.store.join(self.room, nick_candidates(sanitize_nick(requested)))
        except StoreUnavailableError as exc:
            log.warning("cannot join %r: %s", self.room, exc)
            self.send(error_message("unavailable", "the chat is unavailable, try again later"))
            self.close(CloseCode.TRY_AGAIN_LATER, "store unavailable")
            return
        if self.is_closing:  # gone while we waited: on_close did not know the nickname
            await chat.leave(self.room, nick)
            return
        self.nick = nick
        chat.add(self)
        if self._hello_timer is not None:
            IOLoop.current().remove_timeout(self._hello_timer)
            self._hello_timer = None
        # Subscribe before reading the history: a message published meanwhile may
        # come twice (live and in the history; clients drop repeated ids) but is never lost.
        ready = chat.hub.subscribe(chat.channel(self.room), self)
        try:
            await asyncio.wait_for(asyncio.shield(ready), SUBSCRIBE_TIMEOUT)
        except asyncio.TimeoutError:
            log.warning("no subscription to %r within %.0f s", self.room, SUBSCRIBE_TIMEOUT)
            self.send(error_message("unavailable", "the chat is unavailable, try again later"))
            self.close(CloseCode.TRY_AGAIN_LATER, "hub unavailable")
            return
        limits = chat.limits
        self.send(
            {
                "type": "hello",
                "nick": nick,
                "room": self.room,
                "limits": {"max_length": limits.max_length, "rate": limits.rate, "burst": limits.burst},
            }
        )
        try:
            records = await chat.store.history(self.room)
        except StoreUnavailableError as exc:
            log.warning("no history for %r: %s", self.room, exc)
            records = []
            self.send(error_message("unavailable", "the history is unavailable right now"))
        # The records are JSON already: splice them in rather than decode and encode them again.
        self.send('{"type":"history","messages":[' + ",".join(records) + "]}")
        self.send(presence_message(presence))
        await chat.announce(self.room, presence)
        log.info("%s joined %r", nick, self.room)

    async def _rename(self, requested: object) -> None:
        assert self.nick is not None
        wanted = sanitize_nick(requested)
        if not wanted or wanted == self.nick:
            self.send({"type": "nick", "nick": self.nick})
            return
        old = self.nick
        try:
            nick, presence = await self.chat.store.rename(self.room, old, nick_candidates(wanted))
        except StoreUnavailableError:
            self.send(error_message("unavailable", "cannot change nickname right now"))
            return
        self.nick = nick
        self.send({"type": "nick", "nick": nick})
        if nick != old:
            await self.chat.announce(self.room, presence)
            log.info("%s is now %s in %r", old, nick, self.room)

    async def _message(self, text: object) -> None:
        if self.nick is None:
            self.refuse("hello_first", 'send {"type": "hello", "nick": ...} first')
            return
        if not isinstance(text, str):
            self.refuse("invalid", "a message needs a text")
            return
        max_length = self.chat.limits.max_length
        if len(text) > max_length:
            self.refuse("too_long", f"messages are limited to {max_length} characters (this one has {len(text)})")
            return
        text = clean_text(text)
        if not text:
            return  # nothing to show; not worth an error
        if not self._bucket.take():
            self.refuse("rate_limited", f"slow down: at most {self.chat.limits.rate:g} messages per second")
            return
        record = dumps(
            {
                "type": "message",
                "id": secrets.token_hex(8),
                "nick": self.nick,
                "text": text,
                "ts": int(time.time() * 1000),
            }
        )
        store = self.chat.store
        try:
            await store.add_message(self.room, record)
        except StoreUnavailableError as exc:
            self._not_sent(exc)
            return
        try:
            await self.chat.publish(self.room, record)
        except HubUnavailableError as exc:
            self._not_sent(exc)
            # Nobody saw it, so newcomers should not either.
            with contextlib.suppress(StoreUnavailableError):
                await store.remove_message(self.room, record)

    def _not_sent(self, exc: Exception) -> None:
        log.warning("message from %s in %r not sent: %s", self.nick, self.room, exc)
        self.send(error_message("unavailable", "the message was not sent: the chat is unavailable"))

    def on_close(self) -> None:
        if self._hello_timer is not None:
            IOLoop.current().remove_timeout(self._hello_timer)
            self._hello_timer = None
        if self.nick is not None:
            self.chat.discard(self)
            self.chat.spawn(self.chat.leave(self.room, self.nick))
            log.info("%s left %r (%s)", self.nick, self.room, self.close_code)


class StaticHandler(tornado.web.StaticFileHandler):
    """The page and its files, with a strict Content-Security-Policy and revalidation on every load."""

    CSP = (
        "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Content-Security-Policy", self.CSP)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-cache")


def make_app(chat: ChatService) -> tornado.web.Application:
    static = str(STATIC_DIR)
    return tornado.web.Application(
        [
            (r"/ws", ChatSocket, {"chat": chat}),
            (r"/static/(.*)", StaticHandler, {"path": static}),
            (r"/()", StaticHandler, {"path": static, "default_filename": "index.html"}),
        ],
        websocket_ping_interval=PING_INTERVAL,
    )


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="tornado_websocket chat demo")
    parser.add_argument("--port", type=int, default=8888)
    parser.add_argument("--address", default="localhost", help="address to listen on (default: localhost)")
    parser.add_argument(
        "--redis", metavar="URL", help="share rooms, history and presence through Redis, e.g. redis://127.0.0.1:6379/0"
    )
    parser.add_argument("--max-length", type=int, default=Limits.max_length, help="characters per message")
    parser.add_argument("--rate", type=float, default=Limits.rate, help="messages per second per connection")
    parser.add_argument("--burst", type=int, default=Limits.burst, help="messages in a burst per connection")
    parser.add_argument(
        "--presence-ttl",
        type=float,
        default=15.0,
        help="seconds after which the users of a process that stopped heartbeating disappear",
    )
    return parser.parse_args(argv)


async def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
    store: ChatStore
    if args.redis:
        store = RedisStore(args.redis, args.presence_ttl)
        hub = Hub(RedisBackend(args.redis, prefix="chat:pubsub:", reconnect_max=2.0))
    else:
        store = MemoryStore(args.presence_ttl)
        hub = Hub()
    limits = Limits(max_length=args.max_length, rate=args.rate, burst=args.burst)
    chat = ChatService(hub, store, limits, args.presence_ttl)
    server = make_app(chat).listen(args.port, args.address)
    chat.start()
    where = f"Redis at {args.redis}" if args.redis else "this process only"
    print(f"Chat demo on http://{args.address}:{args.port}/ (rooms shared with {where})", flush=True)

    closed = await tornado_websocket.shutdown_on_signal(server, timeout=5.0)
    await chat.close()
    print(f"Stopped; closed {closed} WebSocket connection(s) with 1001", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
