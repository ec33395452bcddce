"""Experiment: N HTTP worker processes in front of one mmserve engine process (LitServe's layout).

Issue #7 asks whether this pays on 2 cores. The single-process server parses HTTP, multipart
bodies and parameters, and serialises JSON on the same interpreter (and GIL) as the engine's
encode and decode threads. Here each front process does only that HTTP work and forwards the
raw input bytes and parameters over a Unix socket to one engine process, which runs mmserve's
own `Inference` (preprocess, engine, postprocess) exactly as the embedded server does. Replies
come back as ready JSON bytes.

    python -m bench.peers.mmserve_multiproc --port 8000 --http-workers 2

The engine process reads the same MMSERVE_* settings as `mmserve serve`. Front processes bind
the port with SO_REUSEPORT, so the kernel spreads connections across them.

Wire format, both ways: a frame is `!II` (header length, payload length), a JSON header, the
payload. Request header {"id", "task", "content_type", "params"}, payload the input bytes;
reply header {"id", "status", "headers"}, payload the JSON body. Nothing is pickled.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

FRAME = struct.Struct("!II")


async def read_frame(reader: asyncio.StreamReader) -> tuple[dict[str, Any], bytes]:
    header_size, payload_size = FRAME.unpack(await reader.readexactly(FRAME.size))
    header = json.loads(await reader.readexactly(header_size))
    payload = await reader.readexactly(payload_size) if payload_size else b""
    return header, payload


def frame(header: dict[str, Any], payload: bytes) -> bytes:
    encoded = json.dumps(header).encode()
    return FRAME.pack(len(encoded), len(payload)) + encoded + payload


# ----- the engine process ------------------------------------------------------------------------


async def serve_engine(socket_path: str, ready: asyncio.Event) -> None:
    from mmserve.server.http.errors import status_for
    from mmserve.server.http.params import parse_params
    from mmserve.server.inference import Inference
    from mmserve.server.runtime import Runtime
    from mmserve.server.settings import Settings

    settings = Settings()
    inference = Inference(Runtime.from_settings(settings))
    await inference.start()

    async def answer(header: dict[str, Any], payload: bytes, writer: asyncio.StreamWriter) -> None:
        try:
            service = inference.service(header["task"])
            params = parse_params(header["params"], settings, service.task.request_options)
            output = await inference.run(header["task"], payload, header["content_type"], params)
            status, headers, body = 200, {}, json.dumps(output).encode()
        except Exception as exc:  # the same status map as the embedded server
            status, message, extra = status_for(exc)
            headers, body = extra or {}, json.dumps({"detail": message}).encode()
        writer.write(frame({"id": header["id"], "status": status, "headers": headers}, body))

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pending: set[asyncio.Task] = set()
        try:
            while True:
                header, payload = await read_frame(reader)
                task = asyncio.ensure_future(answer(header, payload, writer))
                pending.add(task)
                task.add_done_callback(pending.discard)
        except asyncio.IncompleteReadError:  # the front process went away
            for task in pending:
                task.cancel()

    server = await asyncio.start_unix_server(connection, path=socket_path)
    ready.set()
    async with server:
        await server.serve_forever()


# ----- a front (HTTP) process --------------------------------------------------------------------


class EngineLink:
    """One multiplexed Unix-socket connection to the engine, shared by a front's requests."""

    def __init__(self, socket_path: str):
        self.socket_path = socket_path
        self.ids = itertools.count()
        self.waiting: dict[int, asyncio.Future] = {}
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        reader, self.writer = await asyncio.open_unix_connection(self.socket_path)
        asyncio.ensure_future(self._replies(reader))

    async def _replies(self, reader: asyncio.StreamReader) -> None:
        while True:
            header, payload = await read_frame(reader)
            future = self.waiting.pop(header["id"], None)
            if future is not None and not future.done():
                future.set_result((header, payload))

    async def call(self, task: str, data: bytes, content_type: str | None, params: dict[str, Any]):
        request_id = next(self.ids)
        future = asyncio.get_running_loop().create_future()
        self.waiting[request_id] = future
        header = {"id": request_id, "task": task, "content_type": content_type, "params": params}
        self.writer.write(frame(header, data))
        return await future


def front_app(socket_path: str, task: str):
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from mmserve.server.http.errors import ApiError
    from mmserve.server.http.request_body import read_task_input
    from mmserve.server.inference import Inference
    from mmserve.server.runtime import Runtime
    from mmserve.server.settings import Settings

    limits = Inference(Runtime.from_settings(Settings()))  # for the body and JSON limits; loads no model
    max_body_bytes, json_limits = limits.max_body_bytes, limits.json_limits
    link = EngineLink(socket_path)

    async def run_task(request: Request) -> Response:
        try:
            body = await read_task_input(request, max_body_bytes, json_limits)
        except ApiError as exc:
            return JSONResponse({"detail": exc.message}, status_code=exc.status_code)
        header, payload = await link.call(task, body.data, body.content_type, body.params)
        return Response(payload, status_code=header["status"], headers=header["headers"],
                        media_type="application/json")  # fmt: skip

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette):
        await link.connect()
        yield

    return Starlette(routes=[Route(f"/v1/{task}", run_task, methods=["POST"])], lifespan=lifespan)


def serve_front(port: int, socket_path: str, task: str) -> None:
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # the kernel balances the fronts
    sock.bind(("127.0.0.1", port))
    app = front_app(socket_path, task)
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


# ----- entry point -------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--http-workers", type=int, default=2)
    parser.add_argument("--task", default="captioning")
    parser.add_argument("--role", choices=("all", "front"), default="all")
    parser.add_argument("--socket", help="engine socket (front role)")
    args = parser.parse_args()
    if args.role == "front":
        serve_front(args.port, args.socket, args.task)
        return
    socket_path = str(Path(tempfile.mkdtemp(prefix="mmserve-mp-")) / "engine.sock")

    async def run() -> None:
        ready = asyncio.Event()
        engine = asyncio.ensure_future(serve_engine(socket_path, ready))
        await ready.wait()
        fronts = [
            subprocess.Popen([sys.executable, "-m", "bench.peers.mmserve_multiproc", "--role", "front",
                              "--port", str(args.port), "--socket", socket_path, "--task", args.task],
                             env=os.environ.copy())  # fmt: skip
            for _ in range(args.http_workers)
        ]
        try:
            await engine
        finally:
            for front in fronts:
                front.terminate()

    asyncio.run(run())


if __name__ == "__main__":
    main()
