"""The bare HTTP floor for bench/ingest.py: a FastAPI app under the same uvicorn settings
as the API, whose ``/v1/track`` and ``/v1/batch`` parse the JSON body and answer 202 with
nothing stored and nothing routed. What HTTP, uvicorn and FastAPI cost on this machine.

``uvicorn --factory bench.floor:create_app``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request, status

__all__ = ["create_app"]


def create_app() -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/v1/track", status_code=status.HTTP_202_ACCEPTED)
    async def track(request: Request) -> dict[str, Any]:
        body = await request.json()
        return {"accepted": 1, "duplicates": 0, "event": body.get("event")}

    @app.post("/v1/batch", status_code=status.HTTP_202_ACCEPTED)
    async def batch(request: Request) -> dict[str, Any]:
        body = await request.json()
        return {"accepted": len(body.get("batch", [])), "duplicates": 0}

    return app
