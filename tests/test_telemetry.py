"""Spans and metrics for web backends, through OpenTelemetry's in-memory exporters."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import clipnormals

from .fakeapi import KEY, FakeAPI, error, prepared

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend(virtual_time_backend: object) -> object:
    return virtual_time_backend


class Telemetry:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def finished(self) -> tuple[ReadableSpan, ...]:
        return tuple(self.spans.get_finished_spans())

    def metrics(self) -> dict[str, list[tuple[dict[str, object], object]]]:
        found: dict[str, list[tuple[dict[str, object], object]]] = {}
        data = self.reader.get_metrics_data()
        assert data is not None
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        value = getattr(point, "value", None)
                        if value is None:
                            value = (point.count, point.sum)  # type: ignore[attr-defined]
                        found.setdefault(metric.name, []).append(
                            (dict(point.attributes or {}), value)
                        )
        return found


@pytest.fixture
def otel() -> Iterator[Telemetry]:
    telemetry = Telemetry()
    yield telemetry
    telemetry.tracer_provider.shutdown()
    telemetry.meter_provider.shutdown()


def _client(api: FakeAPI, otel: Telemetry, **kwargs: object) -> clipnormals.AsyncClient:
    return clipnormals.AsyncClient(
        api_key=KEY,
        transport=api.transport(),
        rate_limit=clipnormals.RateLimit(requests=6000, per=60.0),
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
        **kwargs,  # type: ignore[arg-type]
    )


async def test_a_span_per_image_with_attempts_status_and_credits(otel: Telemetry) -> None:
    api = FakeAPI(credits=10, script=[error(503, "busy", **{"retry-after": "0.1"})])
    async with _client(api, otel) as client:
        await client.surface_normals(prepared())
    (span,) = otel.finished()
    assert span.name == "clipnormals surface_normals"
    assert span.kind is SpanKind.CLIENT
    attrs = dict(span.attributes or {})
    assert attrs["clipnormals.attempts"] == 2
    assert attrs["http.response.status_code"] == 200
    assert attrs["clipnormals.credits.consumed"] == 1
    assert attrs["clipnormals.credits.remaining"] == 9
    assert attrs["server.address"] == "clipdrop-api.co"
    assert attrs["clipnormals.limiter.wait"] >= 0.0
    assert span.status.status_code is not StatusCode.ERROR


async def test_a_failed_image_has_an_error_span_without_the_key(otel: Telemetry) -> None:
    api = FakeAPI(script=[error(400, f"bad request from {KEY}")])
    async with _client(api, otel) as client:
        with pytest.raises(clipnormals.BadRequestError):
            await client.surface_normals(prepared())
    (span,) = otel.finished()
    assert span.status.status_code is StatusCode.ERROR
    assert dict(span.attributes or {})["error.type"] == "BadRequestError"
    everything = repr(span.to_json())
    assert KEY not in everything


async def test_metrics_count_requests_429s_retries_and_the_balance(otel: Telemetry) -> None:
    api = FakeAPI(
        credits=50,
        script=[error(429, "slow", **{"retry-after": "0.2"}), httpx.ConnectError("refused")],
    )
    async with _client(api, otel) as client:
        for i in range(3):
            await client.surface_normals(prepared(i))
        metrics = otel.metrics()
    requests = {
        (a.get("http.response.status_code"), a.get("error.type")): v
        for a, v in metrics["clipnormals.requests"]
    }
    assert requests == {(429, None): 1, (None, "APIConnectionError"): 1, (200, None): 3}
    assert metrics["clipnormals.rate_limited"][0][1] == 1
    assert metrics["clipnormals.retries"][0][1] == 2
    assert metrics["clipnormals.credits.remaining"][0][1] == 47
    count, _total = metrics["clipnormals.limiter.wait"][0][1]  # type: ignore[misc]
    assert count == 5


async def test_without_providers_the_global_no_op_ones_cost_nothing_visible() -> None:
    api = FakeAPI()
    async with clipnormals.AsyncClient(api_key=KEY, transport=api.transport()) as client:
        await client.surface_normals(prepared())
    assert len(api.arrivals) == 1


async def test_the_span_counts_every_charge_of_the_image(otel: Telemetry) -> None:
    truncated = httpx.Response(
        200,
        content=b"\xff\xd8\xff\xe0" + b"\0" * 20,
        headers={"content-type": "image/jpeg", "x-credits-consumed": "1"},
    )
    api = FakeAPI(credits=10, script=[truncated])
    async with _client(api, otel) as client:
        await client.surface_normals(prepared())
    (span,) = otel.finished()
    assert dict(span.attributes or {})["clipnormals.credits.consumed"] == 2


async def test_the_image_span_is_current_during_the_request_unless_nothing_is_traced() -> None:
    """A sampled-out span still gets its own context, which the request carries; without any
    tracing configured the caller's context is left as it is (there is nothing to carry)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    seen: list[trace.SpanContext] = []

    api = FakeAPI()

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(trace.get_current_span().get_span_context())
        return await api.handle(request)

    sampled_out = TracerProvider(sampler=ALWAYS_OFF)
    outer = trace.get_current_span().get_span_context()
    async with clipnormals.AsyncClient(
        api_key=KEY, transport=httpx.MockTransport(handler), tracer_provider=sampled_out
    ) as client:
        await client.surface_normals(prepared())
    assert seen[-1].is_valid  # the sampled-out image span was current
    assert seen[-1] != outer
    async with clipnormals.AsyncClient(
        api_key=KEY,
        transport=httpx.MockTransport(handler),
        tracer_provider=trace.NoOpTracerProvider(),
    ) as client:
        await client.surface_normals(prepared())
    assert seen[-1] == outer
    sampled_out.shutdown()
