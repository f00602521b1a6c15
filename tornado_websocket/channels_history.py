"""A channel's recent history: offsets, epochs, bounds, and what a ``since`` recovers.

Every message published to a channel gets an *offset*, 1, 2, 3... per
channel. A channel keeps its last messages, at most ``max_count`` of them
and none older than ``max_age`` seconds (:class:`HistorySettings`). Each
history has an *epoch*, a random string made when the history is created;
when the history is lost (the process restarted, Redis was flushed or
replaced) the next one has another epoch, and offsets start again at 1.

A subscriber that saw everything up to offset ``since`` of epoch ``epoch``
asks for the rest; :func:`resolve` answers with a :class:`Recovery`:

- no ``since``: nothing from history, ``recovered`` is True (nothing asked);
- ``epoch`` given and not the channel's: the offsets belong to a lost
  history; everything the new history holds is returned, ``recovered`` False;
- otherwise what history holds after ``since``; ``recovered`` is True only
  if nothing after ``since`` is missing (trimmed by count or age), and False
  for a ``since`` beyond the latest offset (it belongs to no history we know).

This module is pure (no I/O): :class:`ChannelHistory` is the in-memory
history, and the Redis backend, which keeps its history in Redis, calls
:func:`effective_since` and :func:`resolve` for the same answers.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

Data = Union[str, bytes]

#: One history entry: its offset and the message.
Entry = tuple[int, Data]

DEFAULT_MAX_COUNT = 1000
DEFAULT_MAX_AGE = 300.0


def new_epoch() -> str:
    """A fresh random epoch: 16 hex characters."""
    return secrets.token_hex(8)


@dataclass(frozen=True)
class HistorySettings:
    """How much history every channel keeps: at most ``max_count`` messages, none older than ``max_age`` seconds.

    ``max_count=0`` keeps no history (``since`` then recovers only when
    nothing was missed); ``max_age=None`` keeps messages until the count
    pushes them out. Raises ``ValueError`` for a negative count or a
    non-positive age.
    """

    max_count: int = DEFAULT_MAX_COUNT
    max_age: Optional[float] = DEFAULT_MAX_AGE

    def __post_init__(self) -> None:
        if self.max_count < 0:
            raise ValueError(f"max_count must be >= 0, not {self.max_count}")
        if self.max_age is not None and self.max_age <= 0:
            raise ValueError(f"max_age must be > 0 or None, not {self.max_age}")


@dataclass(frozen=True)
class Recovery:
    """The answer to a subscription: the channel's ``epoch`` and ``offset`` (its latest), the ``entries`` that follow
    the subscriber's ``since`` (ascending offsets), and whether they are all of them (``recovered``)."""

    epoch: str
    offset: int
    entries: list[Entry] = field(default_factory=list)
    recovered: bool = True


def effective_since(since: Optional[int], epoch: Optional[str], current_epoch: str) -> Optional[int]:
    """The offset after which history is read: ``since``, or 0 when ``epoch`` is another history's."""
    if since is None:
        return None
    if epoch is not None and epoch != current_epoch:
        return 0
    return since


def resolve(
    since: Optional[int], epoch: Optional[str], current_epoch: str, latest: int, entries: list[Entry]
) -> Recovery:
    """The :class:`Recovery` for a subscriber at (``epoch``, ``since``), see the module docstring.

    ``entries`` are the retained entries after :func:`effective_since`, ascending.
    """
    if since is None:
        return Recovery(current_epoch, latest, [], True)
    if epoch is not None and epoch != current_epoch:
        return Recovery(current_epoch, latest, entries, False)
    if since > latest:
        return Recovery(current_epoch, latest, [], False)
    if since == latest:
        return Recovery(current_epoch, latest, [], True)
    recovered = bool(entries) and entries[0][0] == since + 1
    return Recovery(current_epoch, latest, entries, recovered)


class ChannelHistory:
    """One channel's history in memory (the in-process backend's), bounded by ``settings``.

    ``clock`` (seconds, monotonic) dates the messages for ``max_age``.
    """

    def __init__(self, settings: HistorySettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.epoch = new_epoch()
        self.latest = 0
        self._clock = clock
        self._entries: deque[tuple[int, float, Data]] = deque()

    def __len__(self) -> int:
        self._trim(self._clock())
        return len(self._entries)

    def append(self, message: Data) -> int:
        """Keep ``message`` as the next offset; return that offset."""
        self.latest += 1
        now = self._clock()
        if self.settings.max_count:
            self._entries.append((self.latest, now, message))
        self._trim(now)
        return self.latest

    def _trim(self, now: float) -> None:
        entries = self._entries
        while len(entries) > self.settings.max_count:
            entries.popleft()
        max_age = self.settings.max_age
        if max_age is not None:
            oldest = now - max_age
            while entries and entries[0][1] < oldest:
                entries.popleft()

    def recover(self, since: Optional[int], epoch: Optional[str] = None) -> Recovery:
        """What a subscriber at (``epoch``, ``since``) gets; see :func:`resolve`."""
        after = effective_since(since, epoch, self.epoch)
        if after is None:
            return resolve(since, epoch, self.epoch, self.latest, [])
        self._trim(self._clock())
        entries = self._entries
        if not entries:
            return resolve(since, epoch, self.epoch, self.latest, [])
        start = max(0, after + 1 - entries[0][0])  # offsets in the deque are consecutive
        kept = [(entries[i][0], entries[i][2]) for i in range(start, len(entries))]
        return resolve(since, epoch, self.epoch, self.latest, kept)
