"""Tracing and metrics through OpenTelemetry, for web backends (the ``otel`` extra).

With ``opentelemetry-api`` installed, every image the client sends gets a span, and the client
reports metrics, through the providers given to the client or else the global ones (no-ops until
the application configures OpenTelemetry). Without it, nothing is imported and every call here
is a no-op.

The span, ``clipnormals surface_normals`` (kind CLIENT), covers one image from the first attempt
to the answer, with attributes:

- ``server.address``, ``http.request.method``, ``http.response.status_code`` (the last answer);
- ``clipnormals.attempts``, ``clipnormals.limiter.wait`` (seconds spent waiting for the quota,
  all attempts together);
- ``clipnormals.credits.consumed`` (every attempt's charge, a retried truncated answer
  included) and ``clipnormals.credits.remaining`` (the last answer's balance);
- ``error.type`` and an ERROR status when it failed.

Metrics (instrument names, units per OpenTelemetry's conventions):

- ``clipnormals.requests`` (counter, ``{request}``): attempts sent, by
  ``http.response.status_code`` or ``error.type``;
- ``clipnormals.rate_limited`` (counter, ``{response}``): 429s received;
- ``clipnormals.retries`` (counter, ``{request}``): attempts after an image's first;
- ``clipnormals.limiter.wait`` (histogram, ``s``): time each attempt waited for the quota;
- ``clipnormals.credits.remaining`` (observable gauge, ``{credit}``): the balance last reported.

The key is never an attribute: only the host, statuses, counts and times are.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .._version import __version__
from .credits import parse_credit_header

if TYPE_CHECKING:
    from .credits import Ledger

__all__ = ["ImageSpan", "Telemetry"]

_NAME = "clipnormals"


class ImageSpan:
    """What one image's span records; a no-op without OpenTelemetry."""

    __slots__ = ("_span", "attempts", "consumed", "limiter_wait")

    def __init__(self, span: Any) -> None:
        self._span = span
        self.attempts = 0
        self.consumed = 0
        self.limiter_wait = 0.0

    def charged(self, credits: int) -> None:
        """An answer's headers said it cost ``credits`` (a truncated answer included)."""
        self.consumed += credits
        if self._span is not None and credits:
            self._span.set_attribute("clipnormals.credits.consumed", self.consumed)

    def answered(self, status: int, headers: Mapping[str, str]) -> None:
        """An answer arrived (any status); its credit header is read only for a span."""
        if self._span is None:
            return
        self._span.set_attribute("http.response.status_code", status)
        remaining = parse_credit_header(headers, "x-remaining-credits")
        if remaining is not None:
            self._span.set_attribute("clipnormals.credits.remaining", remaining)


class Telemetry:
    """One client's instruments. Built once per client; cheap when OpenTelemetry is absent."""

    __slots__ = (
        "_attempts",
        "_current_context",
        "_host",
        "_rate_limited",
        "_retries",
        "_status_error",
        "_tracer",
        "_use_span",
        "_wait",
        "enabled",
    )

    def __init__(
        self,
        *,
        host: str,
        ledger: Ledger,
        tracer_provider: Any = None,
        meter_provider: Any = None,
    ) -> None:
        self._host = host
        try:
            from opentelemetry import metrics, trace
            from opentelemetry.trace import SpanKind, StatusCode
        except ImportError:
            if tracer_provider is not None or meter_provider is not None:
                raise ImportError(
                    "tracer_provider/meter_provider need OpenTelemetry: "
                    "pip install 'clipnormals[otel]'"
                ) from None
            self.enabled = False
            return
        self.enabled = True
        self._tracer = trace.get_tracer(_NAME, __version__, tracer_provider=tracer_provider)
        self._use_span = trace.use_span

        def current_context() -> Any:
            return trace.get_current_span().get_span_context()

        self._current_context = current_context
        self._status_error = (SpanKind.CLIENT, StatusCode.ERROR)
        meter = metrics.get_meter(_NAME, __version__, meter_provider=meter_provider)
        self._attempts = meter.create_counter(
            "clipnormals.requests", unit="{request}", description="Attempts sent to the API."
        )
        self._rate_limited = meter.create_counter(
            "clipnormals.rate_limited", unit="{response}", description="429 answers received."
        )
        self._retries = meter.create_counter(
            "clipnormals.retries", unit="{request}", description="Attempts after an image's first."
        )
        self._wait = meter.create_histogram(
            "clipnormals.limiter.wait",
            unit="s",
            description="Time an attempt waited for the quota.",
        )
        meter.create_observable_gauge(
            "clipnormals.credits.remaining",
            callbacks=[_balance_callback(weakref.ref(ledger), host)],
            unit="{credit}",
            description="The credit balance the API last reported.",
        )

    @contextmanager
    def image(self) -> Iterator[ImageSpan]:
        """The span of one image, from its first attempt to its answer (or failure)."""
        if not self.enabled:
            yield ImageSpan(None)
            return
        kind, error_status = self._status_error
        attributes = {"server.address": self._host, "http.request.method": "POST"}
        span = self._tracer.start_span(
            "clipnormals surface_normals",
            kind=kind,
            attributes=attributes,
            record_exception=False,  # the error's type and message are set below, scrubbed
            set_status_on_exception=False,
        )
        if not span.is_recording() and span.get_span_context() == self._current_context():
            # No tracing configured: the no-op span carries the caller's own context, so
            # making it current would change nothing a child span or a propagator sees.
            yield ImageSpan(None)
            return
        with self._use_span(
            span, end_on_exit=True, record_exception=False, set_status_on_exception=False
        ):
            image = ImageSpan(span)
            try:
                yield image
            except BaseException as exc:
                span.set_attribute("error.type", type(exc).__name__)
                span.set_status(error_status, getattr(exc, "message", type(exc).__name__))
                raise
            finally:
                span.set_attribute("clipnormals.limiter.wait", image.limiter_wait)

    def attempt(self, image: ImageSpan, *, retry: bool, waited: float) -> None:
        """An attempt got its token after ``waited`` seconds and is being sent."""
        image.limiter_wait += waited
        image.attempts += 1
        if not self.enabled:
            return
        self._wait.record(waited, {"server.address": self._host})
        if retry:
            self._retries.add(1, {"server.address": self._host})
        if image._span is not None:
            image._span.set_attribute("clipnormals.attempts", image.attempts)

    def outcome(self, *, status: int | None, error: str | None) -> None:
        """An attempt ended with an answer (``status``) or without one (``error``)."""
        if not self.enabled:
            return
        labels: dict[str, str | int] = {"server.address": self._host}
        if status is not None:
            labels["http.response.status_code"] = status
            if status == 429:
                self._rate_limited.add(1, {"server.address": self._host})
        else:
            labels["error.type"] = error or "error"
        self._attempts.add(1, labels)


def _balance_callback(ledger: weakref.ref[Ledger], host: str) -> Callable[[Any], Iterator[Any]]:
    def observe(options: Any) -> Iterator[Any]:
        from opentelemetry.metrics import Observation

        current = ledger()
        if current is not None and current.remaining is not None:
            yield Observation(current.remaining, {"server.address": host})

    return observe
