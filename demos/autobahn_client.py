"""Drive our client through an Autobahn|Testsuite ``fuzzingserver``.

Start the fuzzing server (``wstest -m fuzzingserver``), then run
``python demos/autobahn_client.py ws://127.0.0.1:9001``. Every case is
echoed with ``websocket_connect`` (permessage-deflate offered) and the
reports are updated at the end. ``scripts/autobahn.py`` does all of it.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Optional, Union

import tornado_websocket

AGENT = "tornado_websocket"


async def run_case(server: str, case: int) -> None:
    """Echo every message of one case, in the message callback so each reply leaves in order."""
    url = f"{server}/runCase?case={case}&agent={AGENT}"
    holder: list[tornado_websocket.WebSocketClientConnection] = []
    early: list[Union[str, bytes]] = []  # messages that came with the handshake, before we had `conn`

    def echo(message: Optional[Union[str, bytes]]) -> None:
        if message is None:
            return
        if not holder:
            early.append(message)
            return
        try:
            holder[0].write_message(message, binary=isinstance(message, bytes))
        except tornado_websocket.WebSocketClosedError:
            pass  # the case closed the connection (or we did, on a protocol violation)

    try:
        conn = await tornado_websocket.websocket_connect(
            url, compression_options={}, max_message_size=64 * 1024 * 1024, on_message_callback=echo
        )
    except tornado_websocket.WebSocketError as exc:
        print(f"case {case}: {exc}")
        return
    holder.append(conn)
    for message in early:
        echo(message)
    await conn.wait_closed()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("server", nargs="?", default="ws://127.0.0.1:9001")
    args = parser.parse_args()
    conn = await tornado_websocket.websocket_connect(f"{args.server}/getCaseCount")
    count = int(await conn.read_message() or 0)
    await conn.wait_closed()
    for case in range(1, count + 1):
        await asyncio.wait_for(run_case(args.server, case), 120)
    conn = await tornado_websocket.websocket_connect(f"{args.server}/updateReports?agent={AGENT}")
    await conn.wait_closed()


if __name__ == "__main__":
    asyncio.run(main())
