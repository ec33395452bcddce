"""Floor: plain FastAPI + uvicorn answering at once (no model, no form parsing).

It reads the whole request body and returns a fixed caption, so at c=1 its latency is what
HTTP on this machine costs (client included); every other system's extra latency is its own.
"""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI, Request

from bench.common import ENDPOINT

ANSWER = {"caption": "no-op"}


def create_app() -> FastAPI:
    app = FastAPI()

    @app.post(ENDPOINT)
    async def caption(request: Request) -> dict:
        await request.body()
        return ANSWER

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(create_app(), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
