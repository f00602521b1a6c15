"""The in-process channels backend: history and presence in this process's memory (the default; nothing to install).

Only this process's subscribers get what is published here, and a restart
loses the history (the next history of a channel has a new epoch). Use the
Redis backend (:mod:`tornado_websocket.channels_redis`) to share channels
between processes.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Optional

from tornado_websocket.channels_history import ChannelHistory, Data, HistorySettings, Recovery

if TYPE_CHECKING:
    from tornado_websocket.hub import Sink


class MemoryBackend:
    """Channels kept in this process: a :class:`~tornado_websocket.channels_history.ChannelHistory` per channel."""

    #: Several processes cannot share it (``serve(processes=N)`` refuses it for N > 1).
    shared = False

    def __init__(self, history: Optional[HistorySettings] = None) -> None:
        self.history_settings = history if history is not None else HistorySettings()
        self._sink: Optional[Sink] = None
        self._histories: dict[str, ChannelHistory] = {}
        self._members: dict[str, dict[str, Any]] = {}

    def start(self, sink: Sink) -> None:
        """Attach to the hub (:meth:`tornado_websocket.hub.Backend.start`)."""
        self._sink = sink

    def _history(self, channel: str) -> ChannelHistory:
        history = self._histories.get(channel)
        if history is None:
            history = self._histories[channel] = ChannelHistory(self.history_settings)
        return history

    def channel_added(self, channel: str) -> asyncio.Future[None]:
        """Nothing to start in one process: an already completed future."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    def channel_removed(self, channel: str) -> None:
        """Nothing to stop in one process."""

    async def publish(self, channel: str, message: Data) -> int:
        """Append ``message`` to the channel's history, deliver it to this process's subscribers; return its offset."""
        assert self._sink is not None, "the backend is not attached to a Hub"
        history = self._history(channel)
        offset = history.append(message)
        self._sink.deliver(channel, history.epoch, offset, message)
        return offset

    async def recover(self, channel: str, since: Optional[int], epoch: Optional[str]) -> Recovery:
        """What the channel's history holds after ``since`` in ``epoch``."""
        return self._history(channel).recover(since, epoch)

    async def join(self, channel: str, member_id: str, info: Any) -> None:
        """Add ``member_id`` to the channel's presence (a join event, once per member)."""
        assert self._sink is not None, "the backend is not attached to a Hub"
        members = self._members.setdefault(channel, {})
        if member_id not in members:
            members[member_id] = info
            self._sink.presence_event(channel, "join", member_id, info)

    async def leave(self, channel: str, member_id: str) -> None:
        """Remove ``member_id`` from the channel's presence (a leave event, if it was present)."""
        assert self._sink is not None, "the backend is not attached to a Hub"
        members = self._members.get(channel)
        if members is None or member_id not in members:
            return
        info = members.pop(member_id)
        if not members:
            del self._members[channel]
        self._sink.presence_event(channel, "leave", member_id, info)

    async def members(self, channel: str) -> dict[str, Any]:
        """The channel's present members, by id, with their info."""
        return dict(self._members.get(channel, {}))

    async def close(self) -> None:
        """Nothing to release: history and presence stay in memory."""
