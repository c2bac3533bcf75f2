"""The exceptions clipnormals raises.

Every error a user can see derives from :class:`ClipnormalsError`::

    ClipnormalsError
    ├── APIConnectionError
    │   ├── APITimeoutError
    │   └── CircuitOpenError             the client stopped trying to connect; nothing was sent
    ├── APIStatusError
    │   ├── BadRequestError              400
    │   ├── AuthenticationError          401 (and: no API key configured, before any I/O)
    │   ├── InsufficientCreditsError     402
    │   ├── PermissionDeniedError        403
    │   ├── NotAcceptableError           406
    │   ├── RateLimitError               429 (.retry_after)
    │   ├── ServerError                  5xx
    │   └── UnexpectedResponseError      a 200 that is not an image, any other status
    ├── CreditBudgetError                the client stopped itself; nothing was sent
    ├── ClientClosedError                the client was closed, or cannot be used here
    │   ├── ClientHaltedError            halted by an earlier 402/403 (.cause)
    │   └── SendingStoppedError          stop_sending() was called before it started
    └── InvalidImageError (ValueError)   rejected before upload

Third-party exceptions are translated where they happen, never shown raw: tenacity's never
leave the retry loop (the last error itself is raised); Pillow's become :class:`InvalidImageError`
chained with ``from exc`` (they carry no secret); httpx's become :class:`APIConnectionError` or
:class:`APITimeoutError` *without* chaining (``from None``), because an httpx exception holds
the request, and the request holds the API key in its headers.

No message, repr or attribute of these ever holds the API key: response headers are kept only
after the key header is dropped, and messages are built from the server's words, which are
scrubbed of the key too (a key shorter than 8 characters only where it stands alone, so that
a one-letter key does not garble every word holding that letter).
"""

from __future__ import annotations

import email.utils
import json
import math
import re
import time
import urllib.parse
from collections.abc import Callable, Mapping

import httpx

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "CircuitOpenError",
    "ClientClosedError",
    "ClientHaltedError",
    "ClipnormalsError",
    "CreditBudgetError",
    "InsufficientCreditsError",
    "InvalidImageError",
    "NotAcceptableError",
    "PermissionDeniedError",
    "RateLimitError",
    "SendingStoppedError",
    "ServerError",
    "SharedStateError",
    "UnexpectedResponseError",
    "parse_retry_after",
    "scrub",
    "scrub_bytes",
]

_SENSITIVE_HEADERS = frozenset(
    {"x-api-key", "authorization", "proxy-authorization", "cookie", "set-cookie"}
)
#: Where servers and gateways put the id of a request, first found wins.
REQUEST_ID_HEADERS = ("x-request-id", "request-id", "x-amzn-requestid", "x-cloud-trace-context")
_MAX_BODY_KEPT = 4096


class ClipnormalsError(Exception):
    """Base class of every error clipnormals raises.

    Example:
        >>> try:
        ...     raise InvalidImageError("not an image")
        ... except ClipnormalsError as exc:
        ...     print(type(exc).__name__, exc.message)
        InvalidImageError not an image
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class APIConnectionError(ClipnormalsError):
    """The request could not be sent or its response not read (DNS, refused, reset, truncated).

    Retried by the default :class:`~clipnormals.RetryPolicy`.
    """


class APITimeoutError(APIConnectionError):
    """The request or its response took longer than the client's timeout. Retried by default."""


class APIStatusError(ClipnormalsError):
    """The server answered with an error status.

    Attributes:
        status_code: the HTTP status.
        body: the response body (at most 4 KiB of it), ``b""`` when there was none.
        headers: the response headers, without any credential or cookie.
        error: the server's ``{"error": ...}`` text when the body carried one, else ``None``.
        retry_after: seconds the server asked to wait before trying again (``Retry-After``,
            delta-seconds or an HTTP date), ``None`` when absent.
        request_id: the server's id of the request (``x-request-id`` and the like), for a
            support ticket; ``None`` when the answer carried none.

    Example:
        >>> exc = APIStatusError.from_response(httpx.Response(400, json={"error": "bad"}))
        >>> type(exc).__name__, exc.status_code, exc.error
        ('BadRequestError', 400, 'bad')
    """

    status_code: int

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        error: str | None = None,
        retry_after: float | None = None,
        secret: str | None = None,
    ) -> None:
        """``secret`` (the API key) is removed from everything kept; it is not stored."""
        message = scrub(message, secret)
        super().__init__(message)
        self.status_code = status_code
        self.body = scrub_bytes(body, secret)[:_MAX_BODY_KEPT]
        self.headers: dict[str, str] = _safe_headers(headers or {}, secret)
        self.error = scrub(error, secret) if error is not None else None
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status_code={self.status_code}, message={self.message!r})"

    @property
    def request_id(self) -> str | None:
        """The server's id of the request, from the (scrubbed) headers kept."""
        return next((self.headers[h] for h in REQUEST_ID_HEADERS if h in self.headers), None)

    @classmethod
    def from_response(
        cls, response: httpx.Response, *, secret: str | None = None
    ) -> APIStatusError:
        """Build the typed error for an error response; ``secret`` is scrubbed from all of it.

        The body may be missing, empty, or not JSON (a proxy's HTML page): the error is typed by
        status all the same, and its message says what the body did.
        """
        return cls.from_parts(
            response.status_code, response.headers, _read_body(response), secret=secret
        )

    @classmethod
    def from_parts(
        cls,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        *,
        secret: str | None = None,
        url: str | None = None,
    ) -> APIStatusError:
        """Like :meth:`from_response`, from a status, headers and the body already read.

        ``url`` (without its query, which may hold a gateway's code) is named in the message of
        a status the API does not document (a 404 says where it was not found).
        """
        error = _parse_error(body)
        # Scrubbed before it is quoted: the quote (a repr) escapes backslashes, and the escaped
        # form of a key is one that scrubbing the message afterwards would not recognise.
        detail = error if error is not None else _describe_body(scrub_bytes(body, secret), headers)
        error_cls = _class_for_status(status)
        where = f" from POST {url}" if url and error_cls is UnexpectedResponseError else ""
        return error_cls(
            f"{status} {_reason(status)}{where}: {detail}",
            status_code=status,
            body=body,
            headers=headers,
            error=error,
            retry_after=parse_retry_after(headers.get("retry-after")),
            secret=secret,
        )


class BadRequestError(APIStatusError):
    """400: the request was malformed (missing ``image_file``, unsupported format, too large).

    Never retried: the same request would fail again.
    """


class AuthenticationError(APIStatusError):
    """401: no API key was sent. Also raised before any I/O when no key is configured."""


class InsufficientCreditsError(APIStatusError):
    """402: the account has no credits left. The client halts: later calls fail without I/O."""


class PermissionDeniedError(APIStatusError):
    """403: the API key is invalid or revoked. The client halts: later calls fail without I/O."""


class NotAcceptableError(APIStatusError):
    """406: the ``Accept`` header was not acceptable to the server."""


class RateLimitError(APIStatusError):
    """429: the server's rate limiter refused the request.

    ``retry_after`` (seconds, ``None`` when absent) is what the server asked to wait; the client
    pauses every sender of its quota for that long (capped), or backs off when it is absent.
    """


class ServerError(APIStatusError):
    """5xx: the server failed. Retried with backoff by the default policy."""


class UnexpectedResponseError(APIStatusError):
    """A response the contract does not describe: a 200 that is not a decodable image, or a
    status outside the documented table (3xx, 404, 418, ...). Not retried."""


class CreditBudgetError(ClipnormalsError):
    """The client refused to send a request: the credit reserve or budget was reached.

    Nothing was sent and nothing was spent. In :meth:`AsyncClient.map` the item carries this error
    and a batch reports it as "not sent".
    """


class ClientClosedError(ClipnormalsError):
    """The client is closed, or cannot be used here (another event loop, a forked process), or
    was halted by a 402/403 (:class:`ClientHaltedError`); nothing was sent."""


class ClientHaltedError(ClientClosedError):
    """An earlier 402 or 403 halted the client: every later call fails without I/O.

    Attributes:
        cause: the response that halted it: :class:`InsufficientCreditsError` (402, the account
            is out of credits) or :class:`PermissionDeniedError` (403, the key is invalid or
            revoked).
    """

    def __init__(
        self, message: str, *, cause: InsufficientCreditsError | PermissionDeniedError
    ) -> None:
        super().__init__(message)
        self.cause = cause


class SendingStoppedError(ClientClosedError):
    """:meth:`AsyncClient.stop_sending` was called before this request could start: nothing
    was sent for it (requests already sent when it was called finish normally)."""


class CircuitOpenError(APIConnectionError):
    """The client stopped trying to reach the server after consecutive connection failures.

    Nothing was sent. The circuit lets one probe through after a pause; when it succeeds,
    requests flow again. For a server that answered before, an image waits for that probe (a
    restart of a few seconds loses nothing): the error reaches the caller only once the probe
    failed too, or the image's ``RetryPolicy.total`` ran out; for a server never reached, at
    once.

    Attributes:
        host: the host that could not be reached.
        retry_in: seconds until the probe may tell (the client waits that long and tries
            again); ``None`` when the circuit's verdict is final for now.
    """

    def __init__(self, message: str, *, host: str, retry_in: float | None = None) -> None:
        super().__init__(message)
        self.host = host
        self.retry_in = retry_in


class SharedStateError(ClipnormalsError):
    """The Redis server that shares a key's quota, credits or claims between processes cannot
    be reached, or failed (``clipnormals.redis``). Raised before the request that needed it is
    sent. The message names the server without its password."""


class InvalidImageError(ClipnormalsError, ValueError):
    """The input was rejected before upload: not an image, empty, truncated, unsupported,
    too large in strict mode, or a decompression bomb. No request was made, no credit reserved.
    """


_STATUS_CLASSES: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    402: InsufficientCreditsError,
    403: PermissionDeniedError,
    406: NotAcceptableError,
    429: RateLimitError,
}


def _class_for_status(status: int) -> type[APIStatusError]:
    if status in _STATUS_CLASSES:
        return _STATUS_CLASSES[status]
    if 500 <= status <= 599:
        return ServerError
    return UnexpectedResponseError


def _reason(status: int) -> str:
    try:
        return httpx.codes.get_reason_phrase(status) or "Error"
    except ValueError:  # pragma: no cover - httpx accepts any int
        return "Error"


def _read_body(response: httpx.Response) -> bytes:
    try:
        return response.content
    except httpx.ResponseNotRead:
        return b""


def _parse_error(body: bytes) -> str | None:
    if not body:
        return None
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(data, dict):
        for key in ("error", "message", "detail"):
            value = data.get(key)
            if isinstance(value, str) and value:
                return value
    return None


def _describe_body(body: bytes, headers: Mapping[str, str]) -> str:
    if not body:
        return "empty response body"
    ctype = headers.get("content-type", "no content-type")
    head = body[:120]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if not text or sum(not (c.isprintable() or c.isspace()) for c in text) > len(text) // 10:
        return f"{len(body)} bytes of {ctype} (not text)"  # an image, say: not worth quoting
    snippet = text.strip().replace("\n", " ")
    return f"unparseable {ctype} body: {snippet!r}"


def _safe_headers(headers: Mapping[str, str], secret: str | None) -> dict[str, str]:
    return {
        scrub(k.lower(), secret): scrub(v, secret)
        for k, v in headers.items()
        if k.lower() not in _SENSITIVE_HEADERS
    }


def _secret_forms(secret: str) -> tuple[str, ...]:
    """The key as it may appear in an echo: plain, JSON-escaped, percent-encoded."""
    forms = {secret, json.dumps(secret)[1:-1], urllib.parse.quote(secret, safe="")}
    return tuple(sorted(forms, key=len, reverse=True))


#: A key shorter than this is replaced only where it stands alone (not inside a longer word or
#: path: a one-letter key must not turn "/desk/" into "/des***/"). A longer one is replaced
#: wherever it appears, even inside a longer token.
_SHORT_SECRET = 8
_ALONE = r"(?<![0-9A-Za-z]){}(?![0-9A-Za-z])"


def scrub(text: str, secret: str | None) -> str:
    """``text`` with every form of ``secret`` replaced by ``***``.

    A secret shorter than 8 characters is replaced only where no letter or digit touches it.

    Example:
        >>> scrub('{"echo": "sk-1/2"}', "sk-1/2")
        '{"echo": "***"}'
        >>> scrub("403 Forbidden: Invalid key i (from data/i)", "i")
        '403 Forbidden: Invalid key *** (from data/***)'
    """
    if not secret:
        return text
    for form in _secret_forms(secret):
        if len(form) >= _SHORT_SECRET:
            text = text.replace(form, "***")
        else:
            text = re.sub(_ALONE.format(re.escape(form)), "***", text)
    return text


def scrubber(secret: str | None) -> Callable[[str], str]:
    """:func:`scrub` with the forms of ``secret`` worked out once, for many texts.

    Example:
        >>> scrubber("sk-1/2")("key=sk-1%2F2")
        'key=***'
    """
    if not secret:
        return _unchanged
    forms = _secret_forms(secret)

    def scrub_text(text: str) -> str:
        for form in forms:
            if form in text:
                text = text.replace(form, "***")
        return text

    return scrub_text


def _unchanged(text: str) -> str:
    return text


def scrub_bytes(data: bytes, secret: str | None) -> bytes:
    """:func:`scrub` for bytes (a response body)."""
    if not secret:
        return data
    for form in _secret_forms(secret):
        if len(form) >= _SHORT_SECRET:
            data = data.replace(form.encode(), b"***")
        else:
            pattern = _ALONE.format(re.escape(form)).encode()
            data = re.sub(pattern, b"***", data)
    return data


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date.

    Returns ``None`` when absent or unparseable, and never a negative number.

    Example:
        >>> parse_retry_after("2.5")
        2.5
        >>> parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0)
        10.0
        >>> parse_retry_after("soon") is None
        True
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)
