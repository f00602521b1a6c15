"""Channels shared through Redis: :class:`RedisBackend` (one server) and :class:`RedisClusterBackend` (a cluster).

Needs ``pip install tornado_websocket[redis]`` (redis-py 5 or later) and Redis 7.

Per channel ``C``, with ``T = "{" + prefix + C + "}"`` (a hash tag, so that
in a cluster all of a channel's keys share one slot):

- ``T:seq``: the channel's last offset (an integer counter);
- ``T:epoch``: its epoch; when it is missing (the keys were flushed, or the
  server was replaced) the next publish or subscribe makes a new one and
  offsets start again at 1, so subscribers are told recovery failed;
- ``T:log``: a stream, the history: entry ``<offset>-0`` with the message and
  the time it was published, trimmed to about ``max_count`` entries
  (``XADD MAXLEN ~``) and past ``max_age`` (on each publish, and ignored when
  read);
- ``T:live``: the pub/sub channel (``PUBLISH``; ``SPUBLISH``, sharded pub/sub,
  in a cluster) for live delivery;
- ``T:presence``: a hash, member id to the member's info and process.

A publish is one Lua script (counter, stream, pub/sub message), so offsets,
history and live delivery agree in every process. When the pub/sub
connection is lost the backend reconnects with exponential backoff
(``reconnect_min`` to ``reconnect_max`` seconds), subscribes again, and has
the hub read each channel's history from the last offset it delivered, so
nothing published meanwhile is missed (with AOF on, Redis keeps history
across its restarts too). Each process refreshes a heartbeat key
(``prefix + "proc:" + id``, expiring after ``presence_ttl`` seconds); the
members of a process whose heartbeat expired (it was killed) are removed,
with a leave event, when presence is next read or swept.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

from tornado_websocket.channels_history import (
    Data,
    Entry,
    HistorySettings,
    Recovery,
    effective_since,
    new_epoch,
    resolve,
)

if TYPE_CHECKING:
    from tornado_websocket.hub import Sink

redis_log = logging.getLogger("tornado_websocket.hub")

TEXT, BINARY, PRESENCE = b"t", b"b", b"p"

#: At most this many publishes per pipeline.
OUTBOX_BATCH = 512

#: A publish waiting in the outbox: channel, keys, script arguments, its future.
_Outgoing = tuple[str, list[str], list[Any], "asyncio.Future[int]"]

# KEYS: seq, epoch, log.  ARGV: a new epoch, max_count, max_age_ms (0: none), kind+data, live channel, publish
# command, this publish's id, "1" when it is sent again (then, if the log has it already, its offset is returned).
_PUBLISH = """
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[2], epoch)
  redis.call('SET', KEYS[1], 0)
  redis.call('DEL', KEYS[3])
elseif ARGV[8] == '1' then
  for _, entry in ipairs(redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1024)) do
    if entry[2][6] == ARGV[7] then return {tonumber(string.match(entry[1], '^(%d+)')), epoch} end
  end
end
local seq = redis.call('INCR', KEYS[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local max_count = tonumber(ARGV[2])
local max_age = tonumber(ARGV[3])
if max_count > 0 then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', max_count, seq .. '-0', 't', now, 'm', ARGV[4], 'u', ARGV[7])
  if max_age > 0 then
    local cutoff = now - max_age
    for _ = 1, 16 do
      local batch = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', 64)
      local old = 0
      for i, entry in ipairs(batch) do
        if tonumber(entry[2][2]) < cutoff then old = i else break end
      end
      for i = 1, old do redis.call('XDEL', KEYS[3], batch[i][1]) end
      if old < #batch or old == 0 then break end
    end
  end
end
redis.call(ARGV[6], ARGV[5], seq .. ' ' .. epoch .. ' ' .. ARGV[4])
return {seq, epoch}
"""

# KEYS: seq, epoch, log.  ARGV: a new epoch, since ('' for none), the subscriber's epoch ('' for none).
_RECOVER = """
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[2], epoch)
  redis.call('SET', KEYS[1], 0)
  redis.call('DEL', KEYS[3])
end
local latest = tonumber(redis.call('GET', KEYS[1]) or '0')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[2] == '' then return {epoch, latest, now, {}} end
local after = tonumber(ARGV[2])
if ARGV[3] ~= '' and ARGV[3] ~= epoch then after = 0 end
if after >= latest then return {epoch, latest, now, {}} end
return {epoch, latest, now, redis.call('XRANGE', KEYS[3], '(' .. after .. '-0', '+')}
"""

# KEYS: presence.  ARGV: member id, stored value, live channel, publish command, event payload.
_JOIN = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call(ARGV[4], ARGV[3], ARGV[5])
return 1
"""

# KEYS: presence.  ARGV: member id, live channel, publish command, event prefix. Publishes only if it was there.
_LEAVE = """
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call(ARGV[3], ARGV[2], ARGV[4] .. value .. '}')
return 1
"""


def _unavailable(exc: BaseException) -> Exception:
    from tornado_websocket.hub import HubUnavailableError

    return HubUnavailableError(f"Redis is unavailable: {exc}")


class _Listener:
    """One pub/sub connection (to the server, or to one cluster node) and the channels it carries."""

    def __init__(self, backend: _RedisChannels, connect: Callable[[], Any]) -> None:
        self.backend = backend
        self.connect = connect
        self.wanted: set[str] = set()
        self.active: set[str] = set()
        self.ready: dict[str, list[asyncio.Future[None]]] = {}
        self.task: Optional[asyncio.Task[None]] = None
        self.down_since: Optional[float] = None

    def add(self, channel: str) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if channel in self.active:
            future.set_result(None)
        else:
            self.ready.setdefault(channel, []).append(future)
        self.wanted.add(channel)
        if self.task is None and not self.backend.closing:
            self.task = asyncio.ensure_future(self._run())
        return future

    def remove(self, channel: str) -> None:
        self.wanted.discard(channel)
        self.release(channel)

    def release(self, channel: Optional[str] = None) -> None:
        """Complete the subscribe futures of ``channel`` (every channel if None): nobody waits any more."""
        for name in [channel] if channel is not None else list(self.ready):
            for future in self.ready.pop(name, []):
                if not future.done():
                    future.set_result(None)

    async def _run(self) -> None:
        backend = self.backend
        delay = backend.reconnect_min
        while not backend.closing:
            client: Any = self.connect()
            pubsub: Any = client.pubsub()
            try:
                await pubsub.ping()
                delay = backend.reconnect_min  # connected: the next outage backs off from the start
                if self.down_since is not None:
                    redis_log.warning(
                        "Redis is back after %.1f s; reading history for what was published meanwhile",
                        time.monotonic() - self.down_since,
                    )
                    self.down_since = None
                await self._listen(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not isinstance(exc, backend.redis_errors):
                    redis_log.error("unexpected error in the Redis subscriber; restarting it", exc_info=True)
                if self.down_since is None:
                    self.down_since = time.monotonic()
                    redis_log.warning("lost the Redis connection (%s); reconnecting", exc)
                self.active.clear()
                await asyncio.sleep(delay * (0.5 + secrets.randbelow(1000) / 1000))
                delay = min(delay * 2, backend.reconnect_max)
            finally:
                try:
                    await pubsub.aclose()
                    await client.aclose()
                except Exception:
                    pass

    async def _listen(self, pubsub: Any) -> None:
        """Keep the subscriptions in step with ``wanted`` and deliver what arrives."""
        backend = self.backend
        sharded = backend.sharded
        subscribe = pubsub.ssubscribe if sharded else pubsub.subscribe
        unsubscribe = pubsub.sunsubscribe if sharded else pubsub.unsubscribe
        confirmed, delivered = ("ssubscribe", "smessage") if sharded else ("subscribe", "message")
        names: dict[bytes, str] = {}
        while not backend.closing:
            added = self.wanted - self.active
            removed = self.active - self.wanted
            for channel in added:
                live = backend.key(channel, "live")
                names[live.encode("utf-8")] = channel
                await subscribe(live)
                self.active.add(channel)  # confirmed below; not subscribed twice meanwhile
            if removed:
                await unsubscribe(*(backend.key(c, "live") for c in removed))
                self.active -= removed
            message = await pubsub.get_message(timeout=0.05)
            if message is None:
                continue
            kind = message.get("type")
            channel_name = names.get(message.get("channel") or b"")
            if channel_name is None:
                continue
            if kind == confirmed:
                waiters = self.ready.pop(channel_name, [])
                for future in waiters:
                    if not future.done():
                        future.set_result(None)
                if backend.sink is not None:
                    backend.sink.resync(channel_name)  # after a reconnect: what was published meanwhile
            elif kind == delivered:
                backend.received(channel_name, message["data"])


class _RedisChannels:
    """What the single-server and the cluster backends share: keys, scripts, history, presence."""

    shared = True
    sharded = False

    def __init__(
        self,
        client: Any,
        publisher: Any,
        *,
        prefix: str,
        history: Optional[HistorySettings],
        reconnect_min: float,
        reconnect_max: float,
        presence_ttl: float,
    ) -> None:
        import redis

        self.redis_errors: tuple[type[Exception], ...] = (OSError, redis.RedisError)
        self.client = client
        self.publisher = publisher  # without retries: a publish retried after a lost answer could be stored twice
        self.prefix = prefix
        self.history_settings = history if history is not None else HistorySettings()
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.presence_ttl = presence_ttl
        self.publish_command = "SPUBLISH" if self.sharded else "PUBLISH"
        self._process: tuple[int, str] = (os.getpid(), secrets.token_hex(8))
        self.sink: Optional[Sink] = None
        self.closing = False
        self._publish = client.register_script(_PUBLISH)
        self._recover = client.register_script(_RECOVER)
        self._join = client.register_script(_JOIN)
        self._leave = client.register_script(_LEAVE)
        self._joined: dict[str, set[str]] = {}  # channel -> this process's member ids
        self._outbox: list[_Outgoing] = []
        self._flusher: Optional[asyncio.Future[None]] = None
        self._heartbeat: Optional[asyncio.Task[None]] = None

    # -- keys ------------------------------------------------------------------

    def key(self, channel: str, part: str) -> str:
        return "{" + self.prefix + channel + "}:" + part

    def _history_keys(self, channel: str) -> list[str]:
        return [self.key(channel, "seq"), self.key(channel, "epoch"), self.key(channel, "log")]

    @property
    def process_id(self) -> str:
        """This process's id in presence (a new one in a process forked after the backend was made)."""
        pid, process_id = self._process
        if pid != os.getpid():
            self._process = (os.getpid(), secrets.token_hex(8))
        return self._process[1]

    @property
    def _process_key(self) -> str:
        return self.prefix + "proc:" + self.process_id

    # -- the hub's side ------------------------------------------------------------

    def start(self, sink: Sink) -> None:
        self.sink = sink

    def _listener(self, channel: str) -> _Listener:
        raise NotImplementedError

    def _listeners(self) -> list[_Listener]:
        raise NotImplementedError

    def channel_added(self, channel: str) -> asyncio.Future[None]:
        return self._listener(channel).add(channel)

    def channel_removed(self, channel: str) -> None:
        self._listener(channel).remove(channel)

    def is_subscribed(self, channel: str) -> bool:
        """Whether live delivery of ``channel`` is on (Redis confirmed the subscription)."""
        listener = self._listener(channel)
        return channel in listener.active and channel not in listener.ready

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        errors = self.redis_errors
        try:
            return await script(keys=keys, args=args)
        except errors as exc:
            import redis

            if not isinstance(exc, (OSError, redis.ConnectionError)):
                raise _unavailable(exc) from exc
            # After Redis restarted, a pooled connection is stale and fails once; a second try opens a new one.
            try:
                return await script(keys=keys, args=args)
            except errors as again:
                raise _unavailable(again) from again

    async def publish(self, channel: str, message: Data) -> int:
        """Publish through the outbox: publishes leave in the order they were made, many per round trip.

        A batch whose connection failed is sent once more, marked as a
        retry: the script then looks for each publish's id among the last
        1,024 entries of the channel's log and answers with the offset it
        already has instead of storing it twice. (With ``max_count=0``
        there is no log to look in.) A publish that fails again raises
        HubUnavailableError; Redis may still have stored it if only its
        answer was lost.
        """
        payload = TEXT + message.encode("utf-8") if isinstance(message, str) else BINARY + message
        settings = self.history_settings
        max_age_ms = int(settings.max_age * 1000) if settings.max_age is not None else 0
        args = [
            new_epoch(), settings.max_count, max_age_ms, payload, self.key(channel, "live"), self.publish_command,
            secrets.token_hex(8), "0",
        ]  # fmt: skip
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._outbox.append((channel, self._history_keys(channel), args, future))
        if self._flusher is None:
            self._flusher = asyncio.ensure_future(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._outbox:
                batch, self._outbox = self._outbox[:OUTBOX_BATCH], self._outbox[OUTBOX_BATCH:]
                await self._send_batch(batch)
        finally:
            self._flusher = None

    async def _send_batch(self, batch: list[_Outgoing]) -> None:
        """One pipeline (no transaction: the scripts are atomic each), in order; once more, as a retry, if it failed."""
        for attempt in (1, 2):
            try:
                async with self.publisher.pipeline(transaction=False) as pipe:
                    pipe.scripts.add(self._publish)
                    for _, keys, args, _ in batch:
                        if attempt == 2:
                            args[-1] = "1"
                        pipe.evalsha(self._publish.sha, len(keys), *keys, *args)
                    results = await pipe.execute(raise_on_error=False)
                break
            except self.redis_errors as exc:
                if attempt == 2:
                    for *_, future in batch:
                        if not future.done():
                            future.set_exception(_unavailable(exc))
                    return
        for (*_, future), result in zip(batch, results):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(_unavailable(result))
            else:
                future.set_result(int(result[0]))

    async def recover(self, channel: str, since: Optional[int], epoch: Optional[str]) -> Recovery:
        answer = await self._call(
            self._recover,
            self._history_keys(channel),
            [new_epoch(), "" if since is None else since, epoch or ""],
        )
        current = answer[0].decode("utf-8")
        latest, now, raw = int(answer[1]), int(answer[2]), answer[3]
        max_age = self.history_settings.max_age
        cutoff = now - int(max_age * 1000) if max_age is not None else None
        entries: list[Entry] = []
        for entry_id, fields in raw:
            values = dict(zip(fields[::2], fields[1::2]))
            if cutoff is not None and int(values[b"t"]) < cutoff:
                continue  # older than max_age: not history any more
            offset = int(entry_id.split(b"-")[0])
            entries.append((offset, self._decode(values[b"m"])))
        after = effective_since(since, epoch, current)
        if after is not None:
            entries = [entry for entry in entries if entry[0] > after]
        return resolve(since, epoch, current, latest, entries)

    @staticmethod
    def _decode(payload: bytes) -> Data:
        body = payload[1:]
        return body.decode("utf-8") if payload[:1] == TEXT else body

    def received(self, channel: str, data: bytes) -> None:
        """A pub/sub message of ``channel``: a published message, or a presence event."""
        sink = self.sink
        if sink is None:
            return
        seq, epoch, payload = data.split(b" ", 2)
        if payload[:1] == PRESENCE:
            event = json.loads(payload[1:])
            info = event["info"] if "info" in event else event["stored"]["info"]
            sink.presence_event(channel, event["k"], event["id"], info)
            return
        sink.deliver(channel, epoch.decode("utf-8"), int(seq), self._decode(payload))

    # -- presence ----------------------------------------------------------------------

    def _event(self, kind: str, member_id: str, info: Any) -> bytes:
        return b"0 - " + PRESENCE + json.dumps({"k": kind, "id": member_id, "info": info}).encode("utf-8")

    async def join(self, channel: str, member_id: str, info: Any) -> None:
        await self._beat()
        value = json.dumps({"p": self.process_id, "info": info})
        await self._call(
            self._join,
            [self.key(channel, "presence")],
            [member_id, value, self.key(channel, "live"), self.publish_command, self._event("join", member_id, info)],
        )
        self._joined.setdefault(channel, set()).add(member_id)

    async def leave(self, channel: str, member_id: str) -> None:
        joined = self._joined.get(channel)
        if joined is not None:
            joined.discard(member_id)
            if not joined:
                del self._joined[channel]
        await self._remove(channel, member_id)

    async def _remove(self, channel: str, member_id: str) -> bool:
        # The leave event carries the stored value; the hub's Sink gets it as (k, id, info) through `received`.
        prefix = b'0 - p{"k":"leave","id":' + json.dumps(member_id).encode("utf-8") + b',"stored":'
        removed = await self._call(
            self._leave,
            [self.key(channel, "presence")],
            [member_id, self.key(channel, "live"), self.publish_command, prefix],
        )
        return bool(removed)

    async def members(self, channel: str) -> dict[str, Any]:
        """The channel's members whose process is alive; those of dead processes are removed (with a leave)."""
        try:
            stored = await self.client.hgetall(self.key(channel, "presence"))
        except self.redis_errors as exc:
            raise _unavailable(exc) from exc
        alive: dict[str, bool] = {}
        members: dict[str, Any] = {}
        for raw_id, raw_value in stored.items():
            member_id = raw_id.decode("utf-8")
            value = json.loads(raw_value)
            process = value["p"]
            if process not in alive:
                alive[process] = process == self.process_id or bool(
                    await self.client.exists(self.prefix + "proc:" + process)
                )
            if alive[process]:
                members[member_id] = value["info"]
            else:
                await self._remove(channel, member_id)
        return members

    async def _beat(self) -> None:
        """Refresh this process's heartbeat now, and every third of ``presence_ttl`` (sweeping the dead) after."""
        if self._heartbeat is None:
            await self.client.set(self._process_key, b"1", px=int(self.presence_ttl * 1000))
            self._heartbeat = asyncio.ensure_future(self._beat_forever())

    async def _beat_forever(self) -> None:
        while not self.closing:
            await asyncio.sleep(self.presence_ttl / 3)
            try:
                await self.client.set(self._process_key, b"1", px=int(self.presence_ttl * 1000))
                for channel in list(self._joined):
                    await self.members(channel)
            except Exception as exc:
                redis_log.info("presence heartbeat failed: %s", exc)

    async def close(self) -> None:
        """Stop the subscribers; remove this process's members (with leave events) and heartbeat if Redis answers."""
        self.closing = True
        for listener in self._listeners():
            listener.release()
        tasks = [listener.task for listener in self._listeners() if listener.task is not None]
        if self._heartbeat is not None:
            tasks.append(self._heartbeat)
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        try:
            for channel, member_ids in list(self._joined.items()):
                for member_id in list(member_ids):
                    await asyncio.wait_for(self._remove(channel, member_id), 1.0)
            if self._heartbeat is not None:
                await asyncio.wait_for(self.client.delete(self._process_key), 1.0)
        except Exception:
            pass
        await self.client.aclose()
        if self.publisher is not self.client:
            await self.publisher.aclose()


class RedisBackend(_RedisChannels):
    """Channels in one Redis server (see the module docstring), e.g. ``RedisBackend("redis://127.0.0.1:6379/0")``.

    ``history`` bounds every channel's history (:class:`~tornado_websocket.channels_history.HistorySettings`).
    Raises ``ImportError`` without redis-py.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "tornado_websocket:",
        history: Optional[HistorySettings] = None,
        reconnect_min: float = 0.1,
        reconnect_max: float = 5.0,
        presence_ttl: float = 10.0,
    ) -> None:
        import redis.asyncio  # an optional dependency: fail here, with its own message
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.url = url
        self._redis_asyncio = redis.asyncio
        super().__init__(
            redis.asyncio.from_url(url),
            redis.asyncio.from_url(url, retry=Retry(NoBackoff(), 0)),
            prefix=prefix,
            history=history,
            reconnect_min=reconnect_min,
            reconnect_max=reconnect_max,
            presence_ttl=presence_ttl,
        )
        self._single = _Listener(self, lambda: self._redis_asyncio.from_url(self.url))

    def _listener(self, channel: str) -> _Listener:
        return self._single

    def _listeners(self) -> list[_Listener]:
        return [self._single]


class RedisClusterBackend(_RedisChannels):
    """Channels spread over a Redis Cluster: each channel's keys in its own slot, live delivery by sharded pub/sub.

    ``url`` names any node (``redis://127.0.0.1:7000``). Each cluster node
    that owns subscribed channels gets one pub/sub connection here
    (``SSUBSCRIBE``). Slots that move to another node after the first
    subscription are not followed. Raises ``ImportError`` without redis-py.
    """

    sharded = True

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "tornado_websocket:",
        history: Optional[HistorySettings] = None,
        reconnect_min: float = 0.1,
        reconnect_max: float = 5.0,
        presence_ttl: float = 10.0,
    ) -> None:
        import redis.asyncio
        import redis.asyncio.cluster

        self.url = url
        self._redis_asyncio = redis.asyncio
        cluster = redis.asyncio.cluster.RedisCluster.from_url(url)
        super().__init__(
            cluster,
            cluster,
            prefix=prefix,
            history=history,
            reconnect_min=reconnect_min,
            reconnect_max=reconnect_max,
            presence_ttl=presence_ttl,
        )
        self._by_node: dict[tuple[str, int], _Listener] = {}
        self._slot_nodes: Optional[dict[int, tuple[str, int]]] = None

    async def _send_batch(self, batch: list[_Outgoing]) -> None:
        """Per channel in order (one script at a time), the channels at the same time: they may be on any shard."""
        by_channel: dict[str, list[_Outgoing]] = {}
        for item in batch:
            by_channel.setdefault(item[0], []).append(item)

        async def send(items: list[_Outgoing]) -> None:
            for _, keys, args, future in items:
                try:
                    try:
                        result = await self._publish(keys=keys, args=args)
                    except self.redis_errors:
                        args[-1] = "1"  # again, marked as a retry: stored once at most
                        result = await self._publish(keys=keys, args=args)
                except self.redis_errors as exc:
                    if not future.done():
                        future.set_exception(_unavailable(exc))
                    continue
                if not future.done():
                    future.set_result(int(result[0]))

        await asyncio.gather(*(send(items) for items in by_channel.values()))

    def _node_of(self, channel: str) -> tuple[str, int]:
        from redis.crc import key_slot

        slot = key_slot(self.key(channel, "live").encode("utf-8"))
        nodes = self.client.nodes_manager.slots_cache.get(slot)
        if not nodes:
            raise _unavailable(RuntimeError("the cluster's slots are not known yet (call await backend.connect())"))
        return (nodes[0].host, int(nodes[0].port))

    async def connect(self) -> None:
        """Learn the cluster's slots (done by the first command otherwise). Raises HubUnavailableError."""
        try:
            await self.client.initialize()
        except self.redis_errors as exc:
            raise _unavailable(exc) from exc

    def _listener(self, channel: str) -> _Listener:
        node = self._node_of(channel)
        listener = self._by_node.get(node)
        if listener is None:
            host, port = node
            listener = self._by_node[node] = _Listener(self, lambda: self._redis_asyncio.Redis(host=host, port=port))
        return listener

    def _listeners(self) -> list[_Listener]:
        return list(self._by_node.values())

    def channel_added(self, channel: str) -> asyncio.Future[None]:
        if not self.client.nodes_manager.slots_cache:
            # The slots come with the first command: subscribe once they are known.
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            async def later() -> None:
                try:
                    await self.connect()
                    ready = self._listener(channel).add(channel)
                    await ready
                    if not future.done():
                        future.set_result(None)
                except Exception as exc:
                    if not future.done():
                        future.set_exception(exc)

            asyncio.ensure_future(later())
            return future
        return self._listener(channel).add(channel)
