"""Peer: plain FastAPI calling the model once per request (no batching).

Best fair configuration: the model runs in one dedicated thread (torch already uses every
core inside an op; more model threads would only oversubscribe the CPU), so the event loop
keeps parsing requests while a caption decodes. Preprocessing runs in that thread too, as a
plain server would write it.
"""

from __future__ import annotations

import argparse
import asyncio
from concurrent.futures import ThreadPoolExecutor

import uvicorn
from fastapi import FastAPI, File, UploadFile

from bench.common import ENDPOINT, caption_batch, load, max_length, preprocess


def create_app(weights: str) -> FastAPI:
    task, model = load(weights)
    length = max_length()
    model_thread = ThreadPoolExecutor(1, thread_name_prefix="model")
    app = FastAPI()

    def run(data: bytes) -> str:
        return caption_batch(task, model, [preprocess(task, model, data)], length)[0]

    @app.post(ENDPOINT)
    async def caption(file: UploadFile = File(...)) -> dict:
        data = await file.read()
        text = await asyncio.get_running_loop().run_in_executor(model_thread, run, data)
        return {"caption": text}

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--weights", required=True)
    args = parser.parse_args()
    uvicorn.run(create_app(args.weights), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
