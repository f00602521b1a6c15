"""The chat demo: rooms, nicknames, presence and history on tornado_websocket's channels.

Run ``python demos/chat/chat.py`` and open http://localhost:8888/ (add
``?room=NAME`` for another room). One process keeps history and presence in
memory; with ``--redis URL`` every process shares them, and ``--processes N``
runs N processes on one port::

    python demos/chat/chat.py --redis redis://127.0.0.1:6379/0 --processes 2

The page (``static/``) speaks the channels protocol of
:class:`tornado_websocket.channels.ChannelsHandler` at ``/channels`` through
the package's ``channels.js`` (served at ``/lib/channels.js``). A room
``NAME`` is the channel ``room:NAME``; a page subscribes with ``since: 0``
(the room's last ``--history`` messages), ``presence: true`` and ``info:
{"nick": ...}``, and publishes ``{"text": ...}``. What this file adds to the
library is the chat's policy, in :class:`ChatHandler`:

- only ``room:NAME`` channels (1-32 letters, digits, ``_`` or ``-``);
- nicknames NFC-normalized, without control or format characters, at most
  24 characters (``guest`` when nothing is left);
- a published message becomes ``{"nick", "text", "ts"}``: the nickname is
  the connection's, never the client's word; text over ``--max-length``
  characters is refused with ``too_long``, control characters are removed;
- ``--rate`` messages a second per connection, bursts of ``--burst`` (the
  library's publish limit, refused with ``rate_limited``); a connection that
  keeps being refused is closed with 1008 (policy violation).

A member's presence info is ``{"nick", "process"}`` (the serving process's
id, shown on the page). ``/metrics`` (Prometheus text) and ``/health`` (200,
503 while draining) are the library's handlers; :func:`tornado_websocket.serve`
runs the processes, and SIGINT or SIGTERM closes every WebSocket with 1001.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import tornado.web

import tornado_websocket
from tornado_websocket.channels import ChannelsHandler
from tornado_websocket.channels_history import HistorySettings
from tornado_websocket.channels_memory import MemoryBackend
from tornado_websocket.frames import CloseCode
from tornado_websocket.hub import Hub
from tornado_websocket.static_files import static_route

log = logging.getLogger("chat")

STATIC_DIR = Path(__file__).resolve().parent / "static"
ROOM_CHANNEL_RE = re.compile(r"room:[A-Za-z0-9_-]{1,32}")
MAX_NICK_LENGTH = 24
MAX_RAW_NICK = 200  # characters of a requested nickname looked at before sanitizing
MAX_FRAME_BYTES = 64 * 1024  # a WebSocket message over this is closed with 1009
PING_INTERVAL = 25.0
# C0/C1 controls except tab and newline, and the bidirectional overrides/isolates,
# removed from message text (it is displayed with textContent, so this is about
# readability, not injection).
TEXT_CONTROLS_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def sanitize_nick(raw: object) -> str:
    """A displayable nickname from what a client asked for ("" when nothing is left).

    NFC-normalized, every control, format (zero-width, bidi), private-use,
    surrogate and unassigned character removed, whitespace runs collapsed to
    one space, at most ``MAX_NICK_LENGTH`` characters.
    """
    if not isinstance(raw, str):
        return ""
    text = unicodedata.normalize("NFC", raw[:MAX_RAW_NICK])
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("C"))
    return " ".join(text.split())[:MAX_NICK_LENGTH].strip()


def clean_text(text: str) -> str:
    """Message text as published: CRLF -> LF, control characters removed, outer whitespace stripped."""
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
    # Refusals a connection may earn (this many at once, ``strike_rate`` per second
    # sustained) before it is closed with 1008.
    strikes: int = 10
    strike_rate: float = 0.5


class ChatHandler(ChannelsHandler):
    """``/channels`` with the chat's policy (see the module docstring)."""

    def initialize(self, limits: Limits = Limits(), **settings: Any) -> None:  # type: ignore[override]
        super().initialize(publish_rate=limits.rate, publish_burst=limits.burst, max_channels=10, **settings)
        self.limits = limits
        self.nick = "guest"
        self._strikes = TokenBucket(limits.strike_rate, limits.strikes)

    @property
    def max_message_size(self) -> int:
        return MAX_FRAME_BYTES

    def get_compression_options(self) -> Optional[dict[str, Any]]:
        return {}  # permessage-deflate when the browser offers it

    def can_subscribe(self, channel: str) -> bool:
        return ROOM_CHANNEL_RE.fullmatch(channel) is not None

    def can_publish(self, channel: str, data: Any) -> bool:
        return ROOM_CHANNEL_RE.fullmatch(channel) is not None

    def presence_info(self, channel: str, request: dict[str, Any]) -> Any:
        info = request.get("info")
        self.nick = sanitize_nick(info.get("nick") if isinstance(info, dict) else None) or "guest"
        return {"nick": self.nick, "process": os.getpid()}  # the page shows which process serves whom

    def send_refusal(self, code: str, reason: str, request: Optional[dict[str, Any]] = None) -> None:
        super().send_refusal(code, reason, request)
        if not self._strikes.take() and not self.is_closing():
            log.info("closing %s: too many refused messages", self.nick)
            self.close(CloseCode.POLICY_VIOLATION, "too many refused messages")

    async def on_message(self, message: Union[str, bytes]) -> None:
        """A publish becomes the chat's record (nickname, cleaned text, time); the rest goes to the library."""
        try:
            request = json.loads(message) if isinstance(message, str) else None
        except ValueError:
            request = None
        if isinstance(request, dict) and request.get("op") == "publish":
            data = request.get("data")
            text = data.get("text") if isinstance(data, dict) else None
            if not isinstance(text, str):
                self.send_refusal("bad_request", 'a chat message is {"text": "..."}', request)
                return
            if len(text) > self.limits.max_length:
                self.send_refusal("too_long", f"messages are limited to {self.limits.max_length} characters", request)
                return
            text = clean_text(text)
            if not text:
                return  # nothing to show; not worth an error
            request["data"] = {"nick": self.nick, "text": text, "ts": int(time.time() * 1000)}
            message = json.dumps(request, ensure_ascii=False)
        await super().on_message(message)


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


def make_app(hub: Hub, limits: Limits) -> tornado.web.Application:
    static = str(STATIC_DIR)
    return tornado.web.Application(
        [
            (r"/channels", ChatHandler, {"hub": hub, "limits": limits}),
            (r"/metrics", tornado_websocket.MetricsHandler),
            (r"/health", tornado_websocket.HealthHandler),
            static_route("/lib/", StaticHandler),
            (r"/static/(.*)", StaticHandler, {"path": static}),
            (r"/()", StaticHandler, {"path": static, "default_filename": "index.html"}),
        ],
        websocket_ping_interval=PING_INTERVAL,
    )


def make_hub(args: argparse.Namespace) -> Hub:
    """The in-process hub, or one on Redis (``--redis``); history bounded by ``--history``."""
    history = HistorySettings(max_count=args.history, max_age=args.history_age)
    backend: Any = MemoryBackend(history)
    if args.redis:
        from tornado_websocket.channels_redis import RedisBackend

        backend = RedisBackend(
            args.redis, prefix="chat:", history=history, presence_ttl=args.presence_ttl, reconnect_max=2.0
        )
    return Hub(backend)  # its cache of recent messages is bounded by the backend's history settings


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="tornado_websocket chat demo")
    parser.add_argument("--port", type=int, default=8888)
    parser.add_argument("--address", default="localhost", help="address to listen on (default: localhost)")
    parser.add_argument("--redis", metavar="URL", help="share rooms through Redis, e.g. redis://127.0.0.1:6379/0")
    parser.add_argument("--processes", type=int, default=1, help="processes on the port (more than 1 needs --redis)")
    parser.add_argument("--max-length", type=int, default=Limits.max_length, help="characters per message")
    parser.add_argument("--rate", type=float, default=Limits.rate, help="messages per second per connection")
    parser.add_argument("--burst", type=int, default=Limits.burst, help="messages in a burst per connection")
    parser.add_argument("--history", type=int, default=50, help="messages a room keeps for newcomers and reconnects")
    parser.add_argument("--history-age", type=float, default=3600.0, help="seconds a room keeps a message")
    parser.add_argument("--presence-ttl", type=float, default=10.0, help="seconds until a dead process's users go")
    args = parser.parse_args(argv)
    if args.processes > 1 and not args.redis:
        parser.error("--processes above 1 needs --redis (the processes share rooms through it)")
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Serve until SIGINT or SIGTERM (which close every WebSocket with 1001), in ``--processes`` processes."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
    limits = Limits(max_length=args.max_length, rate=args.rate, burst=args.burst)
    where = f"Redis at {args.redis}" if args.redis else "this process only"

    def started(server: Any, task_id: int) -> None:
        print(f"Chat demo on http://{args.address}:{args.port}/ process {task_id} ({where})", flush=True)

    tornado_websocket.serve(make_app(make_hub(args), limits), args.port, args.processes, args.address, on_start=started)
    print("Stopped", flush=True)


if __name__ == "__main__":
    main()
