"""The asynchronous client: what a user holds, over the request path in ``session``.

Data flow for one image: prepare (in a worker thread, or on the event loop for image bytes
small enough: ``_images/header.py``) -> credit reservation -> concurrency slot ->
limiter token -> HTTP attempt -> (retry: back to the reservation) -> NormalMap. The client
keeps the per-call settings (retry policy, timeouts, preparation, sign conventions); the
:class:`~clipnormals._core.session.Session` under it keeps everything one API key and one
connection pool share, so :meth:`AsyncClient.with_options` views share the quota, the credits
and the connections of the client they come from.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import ssl
from collections.abc import AsyncIterable, Callable, Iterable, Mapping
from dataclasses import replace
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import anyio
import httpx

from .._errors import (
    CircuitOpenError,
    ClipnormalsError,
    InvalidImageError,
    scrub,
)
from .._images.header import small_enough_inline
from .._images.prepare import ImageSource, PreparedImage, PrepareOptions, prepare_image
from .._normals.normalmap import NormalMap
from .config import check_base_url, configure_logging_from_env, resolve_api_key, resolve_base_url
from .credits import CreditLedger, CreditPolicy, Ledger, parse_credit_header
from .gate import StopSignal, calls_trace_hooks
from .http import REQUEST_ID_HEADERS, EventHooks, build_http_client
from .limiter import Limiter, LocalLimiter, RateLimit
from .map import MapIterator, UploadPermit
from .results import ClientStats
from .retry import RetryPolicy
from .session import SURFACE_NORMALS, Attempts, Endpoint, Session
from .validate import require_instance, require_int, require_seconds

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

__all__ = ["AsyncClient"]

logger = logging.getLogger("clipnormals")  # its NullHandler is added by the package
configure_logging_from_env(logger)

S = TypeVar("S")

_UNSET: Any = object()


class AsyncClient:
    """Asynchronous client for the Clipdrop Portrait Surface Normals API.

    Stays under the rate limit, retries transient failures, tracks credits from the response
    headers and refuses to send what the account or the budget cannot pay for.

    Args:
        api_key: the key; ``None`` reads ``CLIPDROP_API_KEY``. Missing, or holding anything but
            visible ASCII: :class:`AuthenticationError` now, before any I/O.
        base_url: the API root; ``None`` reads ``CLIPDROP_BASE_URL``, else the public API.
            Plain ``http://`` is refused except for a literal loopback host (an emulator).
        rate_limit: the quota to stay under (default 60 requests per 60 s, the API's default).
        max_concurrency: requests in flight at most.
        retry: the retry policy (attempts, backoff, deadlines, circuit breaker).
        credits: the credit reserve and budget.
        timeout: seconds for each network phase of an attempt (connect, write, read, pool),
            a float or an ``httpx.Timeout``; ``retry.attempt_timeout`` bounds the whole attempt.
        transport: an httpx async transport (``httpx.MockTransport``, ``httpx.ASGITransport``,
            ...). httpx ignores proxy environment variables with a custom transport (a warning
            says so when one is set).
        limiter: a custom :class:`Limiter` (e.g. one shared through Redis); default: in-process.
        ledger: a custom :class:`Ledger` (e.g. ``clipnormals.redis.RedisLedger``, one credit
            balance and budget for many processes); default: a :class:`CreditLedger` with
            ``credits``. It carries its own policy: passing ``credits`` too is a ValueError.
        prepare: image preparation options (``PrepareOptions(strict=True)`` never downscales).
        flip_x, flip_y: negate the decoded X / Y components of every normal map.
        http_client: an ``httpx.AsyncClient`` of your own (proxies, certificates, mounts,
            limits as you set them); it is never closed by this client. Not with
            ``transport``, ``proxy``, ``verify``, ``default_headers`` or ``event_hooks``.
            Its own timeout is not used: ``timeout`` here applies to every request.
        proxy: a proxy URL (or ``httpx.Proxy``) for every request.
        verify: TLS verification: True, False, a CA bundle path, or an ``ssl.SSLContext``.
        default_headers: extra headers on every request (the key header cannot be overridden;
            ``Content-Type``, ``Content-Length``, ``Transfer-Encoding``, ``Content-Encoding``
            and ``Host`` are refused with ``ValueError``: each request sets its own).
        event_hooks: httpx event hooks, ``{"request": [...], "response": [...]}``. Request hooks
            see the ``x-api-key`` header: never log it.
        tracer_provider, meter_provider: OpenTelemetry providers for the client's spans and
            metrics (the ``otel`` extra); default: the global ones.

    Example:
        >>> import asyncio
        >>> async def main() -> tuple[int, ...]:
        ...     async with AsyncClient() as client:  # key from CLIPDROP_API_KEY
        ...         nm = await client.surface_normals("portrait.jpg")
        ...         return nm.normals.shape
        >>> asyncio.run(main())
        (512, 512, 3)
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        rate_limit: RateLimit | None = None,
        max_concurrency: int = 16,
        retry: RetryPolicy | None = None,
        credits: CreditPolicy | None = None,
        timeout: float | httpx.Timeout = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
        limiter: Limiter | None = None,
        ledger: Ledger | None = None,
        prepare: PrepareOptions | None = None,
        flip_x: bool = False,
        flip_y: bool = False,
        http_client: httpx.AsyncClient | None = None,
        proxy: str | httpx.Proxy | None = None,
        verify: ssl.SSLContext | str | bool = True,
        default_headers: Mapping[str, str] | None = None,
        event_hooks: EventHooks | None = None,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        _check_options(
            api_key=api_key,
            base_url=base_url,
            rate_limit=rate_limit,
            max_concurrency=max_concurrency,
            retry=retry,
            credits=credits,
            limiter=limiter,
            ledger=ledger,
            prepare=prepare,
            http_client=http_client,
            default_headers=default_headers,
            event_hooks=event_hooks,
        )
        if http_client is not None:
            clashing = [
                name
                for name, value, default in (
                    ("transport", transport, None),
                    ("proxy", proxy, None),
                    ("verify", verify, True),
                    ("default_headers", default_headers, None),
                    ("event_hooks", event_hooks, None),
                )
                if value is not default
            ]
            if clashing:
                raise ValueError(
                    f"http_client= is configured already: set {', '.join(clashing)} on it"
                )
            framing = sorted(name for name in http_client.headers if name in _FRAMING_HEADERS)
            if framing:
                raise ValueError(
                    f"http_client=: its headers name {', '.join(framing)}, which describe one "
                    "request's own body or target (the multipart upload and its length, the "
                    "host); the client sets them for each request: remove them from its headers"
                )
        key = resolve_api_key(api_key)
        base = check_base_url(resolve_base_url(base_url))
        self.rate_limit = rate_limit or RateLimit()
        self.retry = retry or RetryPolicy()
        self.max_concurrency = max_concurrency
        self._timeout = _as_timeout(timeout)
        self._prepare = prepare or PrepareOptions()
        self._flip = (flip_x, flip_y)
        self._view = False
        self._stop = StopSignal()
        if http_client is None:
            http = build_http_client(
                base_url=base,
                timeout=self._timeout,
                max_concurrency=max_concurrency,
                transport=transport,
                proxy=proxy,
                verify=verify,
                default_headers=default_headers,
                event_hooks=event_hooks,
            )
        else:
            http = http_client
        self._session = Session(
            key=key,
            base_url=base,
            http=http,
            owns_http=http_client is None,
            limiter=limiter or LocalLimiter(self.rate_limit),
            ledger=ledger if ledger is not None else CreditLedger(credits or CreditPolicy()),
            max_concurrency=max_concurrency,
            retry=self.retry,
            slot_on_wire=calls_trace_hooks(transport, http_client),
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
        )

    def __repr__(self) -> str:
        session = getattr(self, "_session", None)
        if session is None:
            return "AsyncClient(<not built>)"
        view = ", view" if self._view else ""
        return (
            f"AsyncClient(base_url={str(session.base_url)!r}, api_key='***', "
            f"rate_limit={self.rate_limit!r}, max_concurrency={self.max_concurrency}{view})"
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop every ``map`` in progress and close the connection pool (not an ``http_client``
        given to the client, which stays yours). Idempotent.

        A view from :meth:`with_options` closes nothing: the client it came from owns what it
        shares.
        """
        if not self._view:
            await self._session.aclose()

    def with_options(
        self,
        *,
        timeout: float | httpx.Timeout = _UNSET,
        retry: RetryPolicy = _UNSET,
        prepare: PrepareOptions = _UNSET,
        flip_x: bool = _UNSET,
        flip_y: bool = _UNSET,
    ) -> AsyncClient:
        """A view of this client with other per-call settings.

        It shares this client's quota (limiter), credit ledger, concurrency slots, circuit
        breaker, counters and connection pool: a web backend can give one route a short
        ``timeout`` and few retries, and another the batch defaults, under one quota. Closing
        the original closes the view; closing the view closes nothing.

        Example:
            >>> import asyncio
            >>> async def main() -> bool:
            ...     async with AsyncClient() as client:
            ...         quick = client.with_options(timeout=5.0, retry=RetryPolicy(attempts=2))
            ...         await quick.surface_normals("portrait.jpg")
            ...         return quick.credits is client.credits
            >>> asyncio.run(main())
            True
        """
        view = copy.copy(self)
        view._view = True
        view._stop = StopSignal(parent=self._stop)
        if timeout is not _UNSET:
            view._timeout = _as_timeout(timeout)
        if retry is not _UNSET:
            view.retry = retry
        if prepare is not _UNSET:
            view._prepare = prepare
        if flip_x is not _UNSET or flip_y is not _UNSET:
            view._flip = (
                self._flip[0] if flip_x is _UNSET else flip_x,
                self._flip[1] if flip_y is _UNSET else flip_y,
            )
        return view

    def stop_sending(self) -> None:
        """Start no request any more: the graceful half of a shutdown.

        Requests already sent finish normally; every image still waiting (for credits, a
        concurrency slot or the quota) and every later call fails at once with
        :class:`SendingStoppedError` (a :class:`ClientClosedError`), nothing sent. Stopping a
        client stops the views :meth:`with_options` made of it; stopping a view stops only
        that view. Synchronous, so a signal handler may call it. Close the client as usual
        afterwards.

        Example:
            >>> import asyncio, clipnormals
            >>> async def main() -> str:
            ...     async with AsyncClient() as client:
            ...         client.stop_sending()
            ...         try:
            ...             await client.surface_normals("portrait.jpg")
            ...         except clipnormals.SendingStoppedError as exc:
            ...             return type(exc).__name__
            ...     return "sent"
            >>> asyncio.run(main())
            'SendingStoppedError'
        """
        self._stop.stop()

    @property
    def prepare_options(self) -> PrepareOptions:
        """How this client prepares images (before the endpoint's limits are applied)."""
        return self._prepare

    @property
    def credits(self) -> Ledger:
        """The live credit ledger: ``remaining``, ``consumed``, ``reserved``, ``uncertain``."""
        return self._session.ledger

    @property
    def stats(self) -> ClientStats:
        """A snapshot of the requests made so far (by this client and its views)."""
        session = self._session
        return session.counters.snapshot(learned=session.limiter.learned)

    @property
    def halted(self) -> bool:
        """True after a 402 or 403: every later call fails without I/O."""
        return self._session.ledger.halted

    async def surface_normals(
        self,
        image: ImageSource,
        *,
        name: str | None = None,
        timeout: float | httpx.Timeout | None = None,  # noqa: ASYNC109 - httpx's per-phase timeout
    ) -> NormalMap:
        """Turn one portrait into a surface-normal map.

        Args:
            image: a path, bytes, a binary file object, a PIL image, a numpy array or a
                :class:`PreparedImage`.
            name: a file name for error messages when ``image`` has none.
            timeout: for this call only, instead of the client's (seconds per network phase).

        Returns:
            The :class:`NormalMap`, with the answer's ``headers`` and ``request_id``.

        Raises:
            InvalidImageError: rejected before upload; nothing sent, nothing reserved.
            CreditBudgetError: the reserve or budget was reached; nothing sent.
            APIStatusError: the server refused it (after retries, for 429 and 5xx).
            APIConnectionError: the server could not be reached (after retries);
                CircuitOpenError when the client has stopped trying.
            ClientClosedError: the client is closed, or belongs to another event loop or
                process; ClientHaltedError after a 402 or 403.
        """
        call_timeout = None if timeout is None else _as_timeout(timeout)
        result, _ = await self._run(SURFACE_NORMALS, image, name, Attempts(), call_timeout)
        return result

    def map(
        self,
        images: Iterable[S] | AsyncIterable[S],
        *,
        image: Callable[[S], ImageSource] | None = None,
        prefetch: int | None = None,
    ) -> MapIterator[S]:
        """Process many images concurrently; yield a :class:`MapItem` each, in completion order.

        Args:
            images: the sources (any :data:`ImageSource`), or objects of your own, such as jobs
                or records, with ``image`` saying where each one's image is. Sync or async
                iterable, pulled lazily.
            image: turns one element of ``images`` into its image, e.g. ``lambda job:
                job.path`` or ``operator.itemgetter(1)`` for ``(tag, image)`` pairs. Each
                item's ``source`` is then the element itself, so results come back with the
                caller's own objects.
            prefetch: sources pulled ahead of the requests in flight (default
                ``max_concurrency``).

        At most ``max_concurrency + prefetch`` sources are held at a time, whatever the number of
        images. A failed image becomes an item with ``error`` set; the iteration goes on. Use
        ``async with client.map(images) as items`` to own the work in a task group of your
        task; a bare ``async for`` works too, and leaving it (``break``, an exception) stops
        every image in progress: no upload starts for a result nobody can read.

        Raises:
            ClientClosedError: the client is closed.
            TypeError: ``images`` is not an iterable of images (one image alone, such as a path
                or bytes, included: pass ``[image]``), or ``image`` is not callable.

        Example:
            >>> import asyncio
            >>> async def main() -> list[tuple[str, bool]]:
            ...     jobs = [("first", "a.jpg"), ("second", "b.png")]
            ...     async with AsyncClient() as client:
            ...         async with client.map(jobs, image=lambda job: job[1]) as items:
            ...             return sorted([(item.source[0], item.ok) async for item in items])
            >>> asyncio.run(main())
            [('first', True), ('second', True)]
        """
        session = self._session
        session.check_open(bind=False)
        _check_map_sources(images, image)
        if prefetch is not None and prefetch < 0:
            raise ValueError("prefetch must not be negative")
        depth = self.max_concurrency + (self.max_concurrency if prefetch is None else prefetch)
        it: MapIterator[S] = MapIterator(
            images,
            depth=depth,
            uploads=self.max_concurrency,
            run=self._run_item,
            image=image,
            on_close=session.maps.discard,
        )
        session.maps.add(it)
        return it

    async def prepare(self, image: ImageSource, *, name: str | None = None) -> PreparedImage:
        """Prepare ``image`` for upload exactly as :meth:`surface_normals` would; send nothing.

        Uses this client's :class:`PrepareOptions` and the endpoint's limits (25,000,000 pixels,
        30,000,000 bytes, from the API's documentation), in a worker thread (image bytes of at
        most 64 KiB declaring at most 65,536 pixels: on the event loop). Pass the result to
        :meth:`surface_normals` or :meth:`map` to upload it without preparing it again.

        Raises:
            InvalidImageError: the image cannot be sent (see :func:`prepare_image`).
            ClientClosedError: the client is closed.

        Example:
            >>> import asyncio
            >>> async def main() -> tuple[tuple[int, int], str]:
            ...     async with AsyncClient() as client:
            ...         prepared = await client.prepare("portrait.jpg")
            ...     return prepared.size, prepared.content_type
            >>> asyncio.run(main())
            ((512, 512), 'image/jpeg')
        """
        self._session.check_open()
        return await self._prepared(SURFACE_NORMALS, image, name)

    async def _run_item(
        self, image: Any, permit: UploadPermit
    ) -> tuple[NormalMap, int] | tuple[ClipnormalsError, int]:
        attempts = Attempts()
        try:
            return await self._run(SURFACE_NORMALS, image, None, attempts, None, permit)
        except ClipnormalsError as exc:
            return exc, attempts.count
        except Exception as exc:  # a bug must not sink a batch of thousands
            secret = self._session.key.reveal()
            logger.error(
                "unexpected %s while processing an image: %s",
                type(exc).__name__,
                scrub(str(exc), secret),
            )
            error = ClipnormalsError(f"unexpected {type(exc).__name__}: {scrub(str(exc), secret)}")
            if not isinstance(exc, httpx.HTTPError):  # an httpx error holds the request, the key
                error.__cause__ = exc
            return error, attempts.count

    async def _run(
        self,
        endpoint: Endpoint,
        image: ImageSource,
        name: str | None,
        attempts: Attempts,
        http_timeout: httpx.Timeout | None,
        permit: UploadPermit | None = None,
    ) -> tuple[NormalMap, int]:
        session = self._session
        session.check_open()
        self._stop.check()
        session.ledger.check()  # credits gone for good: fail before any Pillow work
        try:
            session.circuit.check()  # the server cannot be reached: likewise
        except CircuitOpenError as exc:
            if exc.retry_in is None or not self.retry.retry_connection_errors:
                raise  # final; otherwise the image waits for the probe in its retries
        prepared = await self._prepared(endpoint, image, name)
        if permit is not None:
            await permit.acquire()  # no further ahead of the consumer than max_concurrency
        body, headers, header = await session.send(
            endpoint,
            prepared,
            retry=self.retry,
            http_timeout=http_timeout if http_timeout is not None else self._timeout,
            attempts=attempts,
            stop=self._stop,
        )
        # The session read the image's header when it checked the body: not opened again.
        # One pass over httpx's headers: each look-up there scans them all. ``items()`` gives
        # lower-case names and joins repeated ones, as ``headers.get`` would.
        answer = dict(headers.items())
        shown = _answer_headers(answer, session.scrub)
        result = NormalMap._from_header(
            body,
            header.size,
            header.comment,
            credits_remaining=parse_credit_header(answer, "x-remaining-credits"),
            credits_consumed=parse_credit_header(answer, "x-credits-consumed"),
            prepared=prepared,
            flip_x=self._flip[0],
            flip_y=self._flip[1],
            headers=shown,
            request_id=next((shown[h] for h in REQUEST_ID_HEADERS if h in shown), None),
            synthetic=answer.get("x-emulator") == "clipnormals",
        )
        return result, attempts.count

    async def _prepared(
        self, endpoint: Endpoint, image: ImageSource, name: str | None
    ) -> PreparedImage:
        options = replace(
            self._prepare,
            max_pixels=min(self._prepare.max_pixels, endpoint.max_pixels),
            max_bytes=min(self._prepare.max_bytes, endpoint.max_bytes),
        )
        if isinstance(image, PreparedImage):
            # Prepared elsewhere (the batch runner does): check it against this endpoint.
            width, height = image.size
            if width * height > options.max_pixels or len(image.data) > options.max_bytes:
                raise InvalidImageError(
                    f"{image.source_name or 'prepared image'}: {width}x{height}, "
                    f"{len(image.data)} bytes is over this endpoint's limits "
                    f"({options.max_pixels} pixels, {options.max_bytes} bytes)"
                )
            return image
        if isinstance(image, bytes | bytearray) and small_enough_inline(image):
            # A few kilobytes declaring a few thousand pixels: checking them (the same checks,
            # the full decode included) costs less than the hop to a worker thread.
            return prepare_image(image, options=options, name=name)
        return await anyio.to_thread.run_sync(
            partial(prepare_image, image, options=options, name=name),
            limiter=self._session.prep_slots,
        )


def _check_map_sources(images: object, image: object) -> None:
    """Refuse at the call what would otherwise fail in a task nobody awaits: not an iterable,
    or one image alone (its bytes or its path's characters would be taken for images)."""
    one = isinstance(images, str | bytes | bytearray | memoryview | os.PathLike)
    if one or hasattr(images, "__array_interface__"):  # a numpy array or a PIL image
        raise TypeError(
            f"map() takes an iterable of images, not one image ({type(images).__name__}): "
            "pass [image], or use surface_normals() for one"
        )
    if not isinstance(images, Iterable | AsyncIterable):
        raise TypeError(
            f"map() takes an iterable of images (sync or async), not {type(images).__name__}"
        )
    if image is not None and not callable(image):
        raise TypeError(f"map(image=...) must be callable, not {type(image).__name__}")


def _as_timeout(timeout: float | httpx.Timeout) -> httpx.Timeout:
    """An httpx.Timeout from seconds; every phase must be a positive number of seconds (a zero
    would make every request fail as if the server could not be reached)."""
    if isinstance(timeout, httpx.Timeout):
        for phase in ("connect", "read", "write", "pool"):
            seconds = getattr(timeout, phase)
            if seconds is not None:
                require_seconds(f"timeout.{phase}", seconds, positive=True)
        return timeout
    require_seconds("timeout", timeout, positive=True)
    return httpx.Timeout(timeout)


_HOOKS = frozenset({"request", "response"})


def _check_options(
    *,
    api_key: object,
    base_url: object,
    rate_limit: object,
    max_concurrency: object,
    retry: object,
    credits: object,
    limiter: object,
    ledger: object,
    prepare: object,
    http_client: object,
    default_headers: object,
    event_hooks: object,
) -> None:
    """Wrong types fail here, with the argument's name, instead of deep inside."""
    if api_key is not None:
        require_instance("api_key", api_key, str, "a string")
    if base_url is not None:
        require_instance("base_url", base_url, str, "a string such as 'https://clipdrop-api.co'")
    require_int("max_concurrency", max_concurrency, minimum=1)
    for name, value, kind in (
        ("rate_limit", rate_limit, RateLimit),
        ("retry", retry, RetryPolicy),
        ("credits", credits, CreditPolicy),
        ("prepare", prepare, PrepareOptions),
        ("http_client", http_client, httpx.AsyncClient),
    ):
        if value is not None:
            require_instance(
                name, value, kind, f"a {kind.__module__.split('.')[0]}.{kind.__name__}"
            )
    if ledger is not None:
        if credits is not None:
            raise ValueError("pass credits= or ledger=, not both: a ledger has its own policy")
        if not isinstance(ledger, Ledger):
            raise TypeError("ledger must implement the Ledger protocol (see clipnormals.Ledger)")
    if limiter is not None and not isinstance(limiter, Limiter):
        raise TypeError(
            "limiter must implement the Limiter protocol: async acquire(), rate_limited(), "
            "admitted() and a learned property"
        )
    if default_headers is not None:
        require_instance("default_headers", default_headers, Mapping, "a mapping of str to str")
        for name, value in default_headers.items():  # type: ignore[attr-defined]
            if not (isinstance(name, str) and isinstance(value, str)):
                raise TypeError("default_headers must map str to str")
            if not (name.isascii() and value.isascii()):
                raise ValueError(f"default_headers: {name!r} is not plain ASCII (HTTP headers are)")
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(
                    f"default_headers: {name!r} is not a header name (letters, digits and "
                    "!#$%&'*+-.^_`|~ only: RFC 9110, section 5.1)"
                )
            if any(not (" " <= c <= "~" or c == "\t") for c in value):
                raise ValueError(
                    f"default_headers: the value of {name!r} holds a control character "
                    "(a line break would split the request: RFC 9110, section 5.5)"
                )
            if name.lower() in _FRAMING_HEADERS:
                raise ValueError(
                    f"default_headers: {name!r} describes the request's own body or target "
                    "(the multipart upload and its length, the host), which the client sets for "
                    "each request; it cannot be a default"
                )
    if event_hooks is not None:
        require_instance("event_hooks", event_hooks, Mapping, "a mapping of hook name to a list")
        for name, functions in event_hooks.items():  # type: ignore[attr-defined]
            if name not in _HOOKS:
                raise ValueError(
                    f"event_hooks: unknown hook {name!r}; httpx has 'request', 'response'"
                )
            if callable(functions) or not all(callable(f) for f in functions):
                raise TypeError(f"event_hooks[{name!r}] must be a list of callables")


_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: Headers of one request's framing (RFC 9110 sections 8.3, 8.6 and 7.2; RFC 9112 section
#: 6.1): a default for them would contradict the body or target each request has.
_FRAMING_HEADERS = frozenset(
    {"content-type", "content-length", "transfer-encoding", "host", "content-encoding"}
)
_PRIVATE_HEADERS = frozenset({"set-cookie", "authorization", "proxy-authorization", "x-api-key"})


def _answer_headers(headers: Mapping[str, str], clean: Callable[[str], str]) -> dict[str, str]:
    """The answer's headers for the user to log: lower-case names, no cookies or credentials,
    and the key scrubbed (by ``clean``, the session's scrubber) should a server echo it. The
    request id is read from this (scrubbed) mapping."""
    return {
        clean(name): clean(v)
        for k, v in headers.items()
        if (name := k.lower()) not in _PRIVATE_HEADERS
    }
