"""Open Inference Protocol v2 (KServe / Triton) endpoints. (placeholder, being written)"""

from fastapi import FastAPI


def add_v2_routes(app: FastAPI, inference) -> None:
    pass
