"""Drive our client through an Autobahn|Testsuite ``fuzzingserver``.

Start the fuzzing server (``wstest -m fuzzingserver``), then run
``python demos/autobahn_client.py ws://127.0.0.1:9001``. Every case is
echoed with ``websocket_connect`` (permessage-deflate offered) and the
reports are updated at the end.
"""

from __future__ import annotations

import argparse
import asyncio

import tornado_websocket

AGENT = "tornado_websocket"


async def run_case(server: str, case: int) -> None:
    url = f"{server}/runCase?case={case}&agent={AGENT}"
    try:
        conn = await tornado_websocket.websocket_connect(
            url, compression_options={}, max_message_size=64 * 1024 * 1024
        )
    except tornado_websocket.WebSocketError as exc:
        print(f"case {case}: {exc}")
        return
    async for message in conn:
        try:
            await conn.write_message(message, binary=isinstance(message, bytes))
        except tornado_websocket.WebSocketClosedError:
            break
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
