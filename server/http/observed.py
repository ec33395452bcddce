"""One request-metrics wrapper for every inference route (task API and v2)."""

from __future__ import annotations

from collections.abc import Awaitable

from fastapi.responses import Response

from mmserve.server.http.errors import status_for
from mmserve.server.inference import ClientDisconnected, Timer
from mmserve.server.metrics import ServerMetrics

CLIENT_CLOSED = 499  # nginx's "client closed request": nobody is left to read a response


async def observed(
    work: Awaitable[Response], metrics: ServerMetrics, task: str, endpoint: str, labelled: bool = True
) -> Response:
    """Await `work`, then count the request by its final status and record its latency.

    `labelled` is False for task names taken from a URL that no served task has: such names
    would grow the metric without bound, so they are not recorded.
    """
    timer = Timer()
    status = 500
    try:
        response = await work
        status = response.status_code
        return response
    except ClientDisconnected:
        status = CLIENT_CLOSED
        return Response(status_code=CLIENT_CLOSED)
    except Exception as exc:
        status = status_for(exc)[0]
        raise
    finally:
        if labelled:
            metrics.requests.labels(task, endpoint, str(status)).inc()
            metrics.latency.labels(task, endpoint).observe(timer.elapsed)

