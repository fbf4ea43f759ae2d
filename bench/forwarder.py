"""The baseline the benchmark compares the relay with: a plain aiohttp WebSocket forwarder.

It does what the cheapest possible relay does and nothing more: accept the client, open the
upstream, and copy text frames both ways untouched (no auth, no parse, no policies, no metering,
no recording, no metrics). ``python -m bench.load --baseline`` runs it beside the relay in the
same run, so "the relay must not cost more than a plain forwarder" is measured, not assumed.

    python -m bench.forwarder --listen 127.0.0.1:8081 --upstream ws://127.0.0.1:8090/v1/realtime
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
from aiohttp import WSMsgType, web


async def _copy(
    src: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    dst: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
) -> None:
    async for msg in src:
        if msg.type is WSMsgType.TEXT:
            await dst.send_str(msg.data)


def build_app(upstream_url: str) -> web.Application:
    app = web.Application()
    http: dict[str, aiohttp.ClientSession] = {}

    async def startup(_: web.Application) -> None:
        http["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def cleanup(_: web.Application) -> None:
        await http["s"].close()

    async def session(request: web.Request) -> web.WebSocketResponse:
        up = await http["s"].ws_connect(
            f"{upstream_url}?{request.query_string}",
            headers={"Authorization": "Bearer x"},
            compress=0,
            max_msg_size=0,
        )
        ws = web.WebSocketResponse(compress=False, max_msg_size=0)
        await ws.prepare(request)
        tasks = [asyncio.create_task(_copy(ws, up)), asyncio.create_task(_copy(up, ws))]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            t.cancel()
        await up.close()
        await ws.close()
        return ws

    async def ready(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/v1/realtime", session)
    app.router.add_get("/readyz", ready)
    app.on_startup.append(startup)
    app.on_cleanup.append(cleanup)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.forwarder")
    parser.add_argument("--listen", required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    web.run_app(build_app(args.upstream), host=host, port=int(port), access_log=None, print=None)


if __name__ == "__main__":
    main()
