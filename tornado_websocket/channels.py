"""``ChannelsHandler``: a ready WebSocket endpoint for channels, speaking JSON text frames.

::

    app = Application([(r"/channels", ChannelsHandler)])                  # a process-wide Hub()
    app = Application([(r"/channels", ChannelsHandler, {"hub": hub})])    # your Hub (Redis...)

Client to server::

    {"op": "subscribe", "channel": C, "since": O, "epoch": E, "presence": true, "info": ANY}
    {"op": "unsubscribe", "channel": C}
    {"op": "publish", "channel": C, "data": ANY, "id": ID}
    {"op": "presence", "channel": C}

Server to client::

    {"op": "subscribed", "channel": C, "offset": O, "epoch": E, "recovered": true|false}
    {"op": "message", "channel": C, "offset": O, "epoch": E, "data": ANY}
    {"op": "unsubscribed", "channel": C}
    {"op": "published", "channel": C, "offset": O, "id": ID}      (only for a publish with an id)
    {"op": "presence", "channel": C, "members": [{"id": M, "info": ANY}, ...]}
    {"op": "join" | "leave", "channel": C, "member": {"id": M, "info": ANY}}
    {"op": "error", "code": CODE, "reason": TEXT, "channel": C, "id": ID}

docs/channels.md has the table of every field. Override :meth:`ChannelsHandler.can_subscribe`,
:meth:`~ChannelsHandler.can_publish` and :meth:`~ChannelsHandler.presence_info` to decide who may do what.

Messages of channels served here are JSON text in the hub: a server that
publishes to them directly uses :func:`publish_json` (or passes
``json.dumps(value)`` to :meth:`Hub.publish <tornado_websocket.hub.Hub.publish>`).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any, Awaitable, Optional, Union

from tornado.log import app_log

from tornado_websocket.channels_history import Data, Recovery
from tornado_websocket.handler import WebSocketHandler
from tornado_websocket.hub import Framing, Hub, HubUnavailableError

#: Error codes of ``{"op": "error"}``.
BAD_REQUEST = "bad_request"
FORBIDDEN = "forbidden"
TOO_MANY_CHANNELS = "too_many_channels"
RATE_LIMITED = "rate_limited"
ALREADY_SUBSCRIBED = "already_subscribed"
NOT_SUBSCRIBED = "not_subscribed"
UNAVAILABLE = "unavailable"

DEFAULT_MAX_CHANNELS = 100
MAX_IN_FLIGHT = 256  # publishes of one connection on their way to the backend
DEFAULT_PUBLISH_RATE = 50.0
DEFAULT_PUBLISH_BURST = 100
MAX_CHANNEL_LENGTH = 200

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class JsonFraming(Framing):
    """The envelopes of the protocol above; each is encoded once per event per process."""

    def message(self, channel: str, epoch: str, offset: int, message: Data) -> Data:
        if isinstance(message, bytes):  # published as bytes by server code: sent as a JSON string
            data = _dumps(message.decode("utf-8", "replace"))
        else:
            data = message
        return (
            '{"op":"message","channel":' + _dumps(channel) + ',"offset":' + str(offset)
            + ',"epoch":' + _dumps(epoch) + ',"data":' + data + "}"
        )  # fmt: skip

    def subscribed(self, channel: str, recovery: Recovery) -> Optional[Data]:
        return _dumps(
            {
                "op": "subscribed",
                "channel": channel,
                "offset": recovery.offset,
                "epoch": recovery.epoch,
                "recovered": recovery.recovered,
            }
        )

    def presence(self, channel: str, kind: str, member_id: str, info: Any) -> Optional[Data]:
        return _dumps({"op": kind, "channel": channel, "member": {"id": member_id, "info": info}})

    def members(self, channel: str, members: dict[str, Any]) -> Optional[Data]:
        listing = [{"id": member_id, "info": info} for member_id, info in sorted(members.items())]
        return _dumps({"op": "presence", "channel": channel, "members": listing})


class JoinedJsonFraming(JsonFraming):
    """The same envelopes; several leaving at once share one text frame, one per line (``?batch=1``)."""

    joiner = "\n"


JSON_FRAMING = JsonFraming()
JOINED_JSON_FRAMING = JoinedJsonFraming()

_DEFAULT_HUB: Optional[Hub] = None


def default_hub() -> Hub:
    """The process-wide in-process :class:`Hub` that handlers without a ``hub`` share (made on first use)."""
    global _DEFAULT_HUB
    if _DEFAULT_HUB is None:
        _DEFAULT_HUB = Hub()
    return _DEFAULT_HUB


async def publish_json(hub: Hub, channel: str, value: Any) -> int:
    """Publish ``value`` (anything ``json.dumps`` takes) to ``channel`` as ChannelsHandler clients expect it.

    Returns the offset; raises ``TypeError`` for what JSON cannot encode and
    :class:`~tornado_websocket.hub.HubUnavailableError` when the backend cannot take it.
    """
    return await hub.publish(channel, _dumps(value))


class _Bucket:
    """A token bucket: ``rate`` tokens a second, at most ``burst``."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class _Refused(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class ChannelsHandler(WebSocketHandler):
    """The channels protocol (see the module docstring) on a :class:`~tornado_websocket.hub.Hub`.

    Settings, from ``initialize`` arguments or else the application settings
    of the same name with a ``channels_`` prefix: ``hub`` (default: the
    process-wide :func:`default_hub`), ``max_channels`` (per connection,
    100), ``publish_rate`` (messages a second per connection, 50) and
    ``publish_burst`` (100).
    """

    hub: Hub
    max_channels: int
    publish_rate: float
    publish_burst: int

    def initialize(
        self,
        hub: Optional[Hub] = None,
        max_channels: Optional[int] = None,
        publish_rate: Optional[float] = None,
        publish_burst: Optional[int] = None,
    ) -> None:
        settings = self.application.settings

        def setting(value: Any, name: str, default: Any) -> Any:
            return value if value is not None else settings.get("channels_" + name, default)

        self.hub = setting(hub, "hub", None) or default_hub()
        self.max_channels = int(setting(max_channels, "max_channels", DEFAULT_MAX_CHANNELS))
        self.publish_rate = float(setting(publish_rate, "publish_rate", DEFAULT_PUBLISH_RATE))
        self.publish_burst = int(setting(publish_burst, "publish_burst", DEFAULT_PUBLISH_BURST))
        self._bucket = _Bucket(self.publish_rate, self.publish_burst)
        self._in_flight: set[asyncio.Future[int]] = set()
        self._framing = JOINED_JSON_FRAMING if self.get_query_argument("batch", "") == "1" else JSON_FRAMING
        self.member_id = secrets.token_hex(8)

    # -- the hooks -----------------------------------------------------------------

    def can_subscribe(self, channel: str) -> Union[bool, Awaitable[bool]]:
        """Whether this connection may subscribe to ``channel`` (may be async). Everyone may, by default."""
        return True

    def can_publish(self, channel: str, data: Any) -> Union[bool, Awaitable[bool]]:
        """Whether this connection may publish ``data`` to ``channel`` (may be async). Everyone may, by default."""
        return True

    def presence_info(self, channel: str, request: dict[str, Any]) -> Any:
        """What others see of this member in ``channel`` (JSON); by default the subscribe request's ``info``."""
        return request.get("info")

    # -- the protocol ----------------------------------------------------------------

    def send_refusal(self, code: str, reason: str, request: Optional[dict[str, Any]] = None) -> None:
        """Send ``{"op": "error"}``, naming the channel and id of ``request`` if it had them."""
        error: dict[str, Any] = {"op": "error", "code": code, "reason": reason}
        if request is not None:
            for key in ("channel", "id"):
                if key in request:
                    error[key] = request[key]
        if not self.is_closing():
            self.write_message(_dumps(error))

    async def on_message(self, message: Union[str, bytes]) -> None:
        request: Optional[dict[str, Any]] = None
        try:
            if isinstance(message, bytes):
                raise _Refused(BAD_REQUEST, "send JSON text frames")
            try:
                parsed = json.loads(message)
            except ValueError:
                raise _Refused(BAD_REQUEST, "not JSON") from None
            if not isinstance(parsed, dict):
                raise _Refused(BAD_REQUEST, "send a JSON object")
            request = parsed
            op = request.get("op")
            if op == "publish":
                await self._publish(request)
            elif op == "subscribe":
                await self._subscribe(request)
            elif op == "unsubscribe":
                self._unsubscribe(request)
            elif op == "presence":
                await self._presence(request)
            else:
                raise _Refused(BAD_REQUEST, f"unknown op {op!r}")
        except _Refused as refusal:
            self.send_refusal(refusal.code, refusal.reason, request)
        except HubUnavailableError as exc:
            self.send_refusal(UNAVAILABLE, str(exc), request)

    @staticmethod
    def _channel(request: dict[str, Any]) -> str:
        channel = request.get("channel")
        if not isinstance(channel, str) or not 0 < len(channel) <= MAX_CHANNEL_LENGTH:
            raise _Refused(BAD_REQUEST, f"channel must be a string of 1 to {MAX_CHANNEL_LENGTH} characters")
        return channel

    @staticmethod
    async def _allowed(answer: Union[bool, Awaitable[bool]]) -> bool:
        if not isinstance(answer, bool):
            answer = await answer
        return bool(answer)

    async def _subscribe(self, request: dict[str, Any]) -> None:
        channel = self._channel(request)
        since = request.get("since")
        if since is not None and (type(since) is not int or since < 0):
            raise _Refused(BAD_REQUEST, "since must be an offset (an integer >= 0)")
        epoch = request.get("epoch")
        if epoch is not None and not isinstance(epoch, str):
            raise _Refused(BAD_REQUEST, "epoch must be a string")
        current = self.hub.channels(self)
        if channel in current:
            raise _Refused(ALREADY_SUBSCRIBED, f"already subscribed to {channel!r}")
        if len(current) >= self.max_channels:
            raise _Refused(TOO_MANY_CHANNELS, f"at most {self.max_channels} channels per connection")
        if not await self._allowed(self.can_subscribe(channel)):
            raise _Refused(FORBIDDEN, f"may not subscribe to {channel!r}")
        member = (self.member_id, self.presence_info(channel, request)) if request.get("presence") else None
        await self.hub.subscribe(channel, self, since, epoch=epoch, framing=self._framing, member=member)

    def _unsubscribe(self, request: dict[str, Any]) -> None:
        channel = self._channel(request)
        if channel not in self.hub.channels(self):
            raise _Refused(NOT_SUBSCRIBED, f"not subscribed to {channel!r}")
        self.hub.unsubscribe(channel, self)
        self.write_message(_dumps({"op": "unsubscribed", "channel": channel}))

    async def _publish(self, request: dict[str, Any]) -> None:
        channel = self._channel(request)
        if "data" not in request:
            raise _Refused(BAD_REQUEST, "publish needs data")
        data = request["data"]
        if not self._bucket.take():
            raise _Refused(RATE_LIMITED, f"at most {self.publish_rate:g} messages a second")
        if not await self._allowed(self.can_publish(channel, data)):
            raise _Refused(FORBIDDEN, f"may not publish to {channel!r}")
        # Not awaited: the next message is read while this one is on its way (the hub keeps
        # publishes in the order they were made); at most MAX_IN_FLIGHT are, then reading waits.
        published = asyncio.ensure_future(self.hub.publish(channel, _dumps(data)))
        self._in_flight.add(published)
        published.add_done_callback(lambda future: self._published(future, request, channel))
        if len(self._in_flight) >= MAX_IN_FLIGHT:
            await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)

    def _published(self, future: asyncio.Future[int], request: dict[str, Any], channel: str) -> None:
        self._in_flight.discard(future)
        if future.cancelled() or self.is_closing():
            return
        exc = future.exception()
        if exc is not None:
            if isinstance(exc, HubUnavailableError):
                self.send_refusal(UNAVAILABLE, str(exc), request)
            else:
                app_log.error("publish to %r failed", channel, exc_info=exc)
                self.send_refusal(UNAVAILABLE, "publish failed", request)
        elif "id" in request:
            answer = {"op": "published", "channel": channel, "offset": future.result(), "id": request["id"]}
            self.write_message(_dumps(answer))

    async def _presence(self, request: dict[str, Any]) -> None:
        channel = self._channel(request)
        if not await self._allowed(self.can_subscribe(channel)):
            raise _Refused(FORBIDDEN, f"may not see {channel!r}")
        members = await self.hub.members(channel)
        listing = JSON_FRAMING.members(channel, members)
        if listing is not None and not self.is_closing():
            self.write_message(listing)
