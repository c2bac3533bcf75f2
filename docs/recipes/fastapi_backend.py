"""A web backend that shares one AsyncClient for the application's lifetime.

Written with Starlette (what FastAPI is built on; the emulator extra brings it). Serve it
against the API, key in CLIPDROP_API_KEY:

    uvicorn fastapi_backend:app

    curl -F image=@portrait.jpg http://127.0.0.1:8000/normals -o normals.jpg

Try it against the built-in emulator (no key, no network): the app is served on a loopback
port and sent a few requests:

    python fastapi_backend.py --emulator
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import clipnormals

log = logging.getLogger("backend")

# A web request should not wait for the batch-sized defaults (8 attempts, 10 minutes): give
# up sooner and let the caller retry.
RETRY = clipnormals.RetryPolicy(attempts=3, total=20.0)
DEADLINE = 30.0  # seconds one HTTP request may wait for the quota and the API


def api_client() -> clipnormals.AsyncClient:
    return clipnormals.AsyncClient(retry=RETRY, timeout=20.0)  # key from CLIPDROP_API_KEY


def tracing() -> tuple[object, Callable[[], list[str]]]:
    """OpenTelemetry for the client: a tracer provider (``clipnormals[otel]`` and the SDK).

    In production, export to your collector (``OTLPSpanExporter``) and set the provider
    globally with ``trace.set_tracer_provider``: the client then needs no argument. Here the
    spans are kept in memory so the demo can show them.
    """
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    def spans() -> list[str]:
        return [
            f"{s.name} status={s.attributes.get('http.response.status_code')} "
            f"attempts={s.attributes.get('clipnormals.attempts')} "
            f"error={s.attributes.get('error.type')}"
            for s in exporter.get_finished_spans()
            if s.attributes is not None
        ]

    return provider, spans


def create_app(make_client: Callable[[], clipnormals.AsyncClient] = api_client) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, clipnormals.AsyncClient]]:
        # One client for every request: one quota, one credit ledger, one connection pool.
        async with make_client() as client:
            yield {"client": client}  # request.state.client in the handlers

    return Starlette(
        routes=[
            Route("/normals", normals, methods=["POST"]),
            Route("/status", status, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


async def normals(request: Request) -> Response:
    """POST a portrait as the multipart field ``image``; get the normal map (JPEG) back."""
    client: clipnormals.AsyncClient = request.state.client
    async with request.form(max_files=1, max_fields=0) as form:
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            return error(400, "send the portrait as the multipart file field 'image'")
        data = await upload.read()
    try:
        async with asyncio.timeout(DEADLINE):
            nm = await client.surface_normals(data, name=upload.filename)
    except clipnormals.InvalidImageError as exc:
        return error(422, exc.message)  # the user's file: say what is wrong with it
    except TimeoutError:
        return error(503, "busy: try again in a minute", retry_after=60)
    except clipnormals.RateLimitError as exc:
        return error(503, "busy: try again shortly", retry_after=exc.retry_after or 10)
    except (
        clipnormals.CreditBudgetError,
        clipnormals.InsufficientCreditsError,
        clipnormals.PermissionDeniedError,
        clipnormals.AuthenticationError,
        clipnormals.ClientClosedError,
    ) as exc:
        # Our account, not the user's request: log the details, keep them private.
        log.error("normal maps unavailable: %s", exc.message)
        return error(503, "normal maps are unavailable at the moment")
    except clipnormals.ClipnormalsError as exc:  # 5xx or the network, after retries
        log.warning("upstream failure: %s", exc.message)
        return error(502, "the normal map service failed; try again")
    return Response(nm.jpeg, media_type="image/jpeg")


async def status(request: Request) -> Response:
    """What operations want to watch: credits left, and whether the client has halted."""
    client: clipnormals.AsyncClient = request.state.client
    stats = client.stats
    return JSONResponse(
        {
            "credits_remaining": client.credits.remaining,
            "halted": client.halted,
            "requests": stats.attempts,
            "rate_limited": stats.rate_limited,
        }
    )


def error(code: int, message: str, *, retry_after: float | None = None) -> Response:
    headers = {"retry-after": str(max(1, round(retry_after)))} if retry_after else None
    return JSONResponse({"error": message}, status_code=code, headers=headers)


app = create_app()


async def try_with_emulator() -> int:
    """Serve the app on a loopback port against a fresh emulator; show what callers get."""
    import httpx
    import uvicorn

    from clipnormals.emulator import Emulator
    from clipnormals.testing import client_for, emulator_config

    emulator = Emulator(emulator_config(credits=5))
    provider, spans = tracing()
    app = create_app(lambda: client_for(emulator, retry=RETRY, tracer_provider=provider))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():  # it could not start: uvicorn has logged why
            serving.result()
            return 1
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    portrait = (Path(clipnormals.__file__).parent / "samples" / "astronaut.png").read_bytes()
    seen = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60.0) as http:
        for label, file in (
            ("a portrait", ("astronaut.png", portrait, "image/png")),
            ("a text file", ("notes.txt", b"not an image", "text/plain")),
        ):
            response = await http.post("/normals", files={"image": file})
            seen.append(response.status_code)
            print(f"{label}: {response.status_code} {response.headers['content-type']}")
        emulator.set_credits(emulator.default_key, 0)  # the account runs dry
        response = await http.post("/normals", files={"image": ("a.png", portrait, "image/png")})
        seen.append(response.status_code)
        print(f"out of credits: {response.status_code} {response.json()}")
        print(f"status: {(await http.get('/status')).json()}")
    for line in spans():
        print(f"span: {line}")
    server.should_exit = True
    await serving
    return 0 if seen == [200, 422, 503] else 1


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if "--emulator" not in sys.argv:
        print(__doc__)
        sys.exit(2)
    sys.exit(asyncio.run(try_with_emulator()))
