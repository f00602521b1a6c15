"""Drive our client through an Autobahn|Testsuite ``fuzzingserver``.

Start the fuzzing server (``wstest -m fuzzingserver``), then run
``python demos/autobahn_client.py ws://127.0.0.1:9001 [--mode MODE]``. Every
case is echoed with ``websocket_connect`` (permessage-deflate offered),
receiving messages with a callback, a ``read_message()`` loop or ``async
for`` (``--mode``), and the reports are updated at the end (agent
``tornado_websocket-MODE``). ``scripts/autobahn.py`` does all of it.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Optional, Union

import tornado_websocket

AGENT = "tornado_websocket"


def echo_to(conn: tornado_websocket.WebSocketClientConnection, message: Union[str, bytes]) -> None:
    try:
        conn.write_message(message, binary=isinstance(message, bytes))
    except tornado_websocket.WebSocketClosedError:
        pass  # the case closed the connection (or we did, on a protocol violation)


async def run_case(server: str, case: int, mode: str) -> None:
    """Echo every message of one case, receiving them the way ``mode`` says (see MODES)."""
    url = f"{server}/runCase?case={case}&agent={AGENT}-{mode}"
    holder: list[tornado_websocket.WebSocketClientConnection] = []

    def on_message(message: Optional[Union[str, bytes]]) -> None:
        # Runs only once websocket_connect's caller holds the connection: what came with
        # the 101 waits until then, so no message can arrive before ``holder`` is filled.
        if message is not None:
            echo_to(holder[0], message)

    try:
        conn = await tornado_websocket.websocket_connect(
            url,
            compression_options={},
            max_message_size=64 * 1024 * 1024,
            on_message_callback=on_message if mode == "callback" else None,
        )
    except tornado_websocket.WebSocketError as exc:
        print(f"case {case}: {exc}")
        return
    holder.append(conn)
    if mode == "read-loop":
        while (message := await conn.read_message()) is not None:
            echo_to(conn, message)
    elif mode == "async-for":
        async for message in conn:
            echo_to(conn, message)
    await conn.wait_closed()


#: The ways of receiving on the client: a callback, a ``read_message()`` loop, ``async for``.
MODES = ("callback", "read-loop", "async-for")


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("server", nargs="?", default="ws://127.0.0.1:9001")
    parser.add_argument("--mode", choices=MODES, default="callback", help="how messages are received")
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio", help="the event loop")
    return parser.parse_args()


async def main(args: argparse.Namespace) -> None:
    conn = await tornado_websocket.websocket_connect(f"{args.server}/getCaseCount")
    count = int(await conn.read_message() or 0)
    await conn.wait_closed()
    for case in range(1, count + 1):
        await asyncio.wait_for(run_case(args.server, case, args.mode), 120)
    conn = await tornado_websocket.websocket_connect(f"{args.server}/updateReports?agent={AGENT}-{args.mode}")
    await conn.wait_closed()


if __name__ == "__main__":
    arguments = parse_arguments()
    if arguments.loop == "uvloop":
        import uvloop

        uvloop.run(main(arguments))
    else:
        asyncio.run(main(arguments))
