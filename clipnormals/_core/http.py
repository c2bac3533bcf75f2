"""The HTTP layer under the client: its httpx client, reading answers, describing failures.

Only httpx is spoken here. Settings a company network needs (a proxy, a CA bundle, extra
headers, event hooks, or an ``httpx.AsyncClient`` of the caller's own) are turned into one
``httpx.AsyncClient``; the request path (``session``) never builds one itself.

Proxy environment variables (``HTTPS_PROXY``, ``ALL_PROXY``, ``NO_PROXY``) are honoured by httpx
only when it builds the transport itself: with ``transport=``, they are silently ignored. The
client says so in a warning when one of them is set, instead of leaving a user to find out
that their proxy is bypassed.
"""

from __future__ import annotations

import http.cookiejar
import io
import logging
import os
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from .._errors import REQUEST_ID_HEADERS, APIConnectionError, APITimeoutError, scrub
from .._version import __version__
from .config import is_loopback_host, proxy_environment

__all__ = [
    "MAX_MAP_BYTES",
    "REQUEST_ID_HEADERS",
    "AnswerTooLargeError",
    "EventHooks",
    "ImageHeader",
    "build_http_client",
    "describe_transport_error",
    "host_label",
    "multipart_upload",
    "read_body",
    "read_image_body",
    "translate",
]

logger = logging.getLogger("clipnormals")

EventHooks = Mapping[str, Sequence[Callable[..., Any]]]

#: Headers that carry a request id, in the order they are looked for (Clipdrop's docs name
#: none; these are what gateways and CDNs in front of an API commonly add).

_USER_AGENT = f"clipnormals/{__version__}"


def build_http_client(
    *,
    base_url: httpx.URL,
    timeout: httpx.Timeout,
    max_concurrency: int,
    transport: httpx.AsyncBaseTransport | None,
    proxy: str | httpx.Proxy | None,
    verify: ssl.SSLContext | str | bool,
    default_headers: Mapping[str, str] | None,
    event_hooks: EventHooks | None,
) -> httpx.AsyncClient:
    """The httpx client for these settings (the caller closes it).

    A loopback host (an emulator) is never reached through a proxy: proxy environment
    variables are not applied to it, and an explicit ``proxy`` with plain http to loopback is
    refused, since the proxy would read the key.
    """
    if transport is not None and proxy is not None:
        raise ValueError("pass either transport= or proxy=, not both (configure the transport)")
    loopback = is_loopback_host(base_url.host)
    if proxy is not None and loopback and base_url.scheme == "http":
        raise ValueError(
            "refusing to send the API key over plain http through a proxy (the proxy would "
            f"read it): {base_url.host} is a loopback host, reach it directly (no proxy=)"
        )
    applicable = proxy_environment(base_url.scheme, base_url.host)
    if transport is not None and applicable:
        logger.warning(
            "a proxy environment variable is set (%s), but a custom transport= was given: "
            "httpx does not apply proxy variables to it, so requests go direct; pass proxy= "
            "or configure the transport",
            ", ".join(applicable),
        )
    # httpx would route even 127.0.0.1 through HTTP_PROXY unless NO_PROXY says otherwise.
    host = f"[{base_url.host}]" if ":" in base_url.host else base_url.host  # IPv6 in brackets
    mounts = {f"all://{host}": None} if loopback and proxy is None else None
    if isinstance(verify, str):  # a CA bundle file or folder, as requests and httpx once took
        try:
            if os.path.isdir(verify):
                verify = ssl.create_default_context(capath=verify)
            else:
                verify = ssl.create_default_context(cafile=verify)
        except OSError as exc:  # ssl.SSLError included
            raise ValueError(
                f"verify={verify!r}: not a CA bundle file or folder ({exc.strerror or exc})"
            ) from None
    headers = {"user-agent": _USER_AGENT, **(default_headers or {})}
    hooks = {name: list(functions) for name, functions in (event_hooks or {}).items()}
    return _APIHTTPClient(
        base_url=base_url,
        transport=transport,
        proxy=proxy,
        verify=verify,
        timeout=timeout,
        limits=httpx.Limits(
            max_connections=max_concurrency,
            max_keepalive_connections=max_concurrency,
            keepalive_expiry=KEEPALIVE_EXPIRY,
        ),
        headers=headers,
        event_hooks=hooks,
        follow_redirects=False,
        mounts=mounts,
    )


class _NoCookieJar(http.cookiejar.CookieJar):
    def set_cookie(self, cookie: http.cookiejar.Cookie) -> None:
        return None


class _NoCookies(httpx.Cookies):
    """Cookies that stay empty: nothing set, nothing taken from an answer."""

    def __init__(self) -> None:
        super().__init__(_NoCookieJar())

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class _APIHTTPClient(httpx.AsyncClient):
    """httpx's client keeping no cookies. The API sets none; a client holding a key carries no
    state from one answer to the next (a load balancer's affinity cookie included); and
    httpx's cookie handling (a ``urllib`` request and a parsed header block made for every
    answer) costs about a tenth of a bare request's CPU."""

    _no_cookies = _NoCookies()

    @property
    def cookies(self) -> httpx.Cookies:
        return self._no_cookies

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        raise AttributeError("the API client keeps no cookies")


#: Seconds an idle connection is kept for reuse: below the idle timeouts servers commonly close
#: at (gunicorn 2 s, uvicorn and Node.js 5 s, nginx 75 s). At the same value as the server's
#: (httpx's default is 5 s), a request sent after a pause of about that length races the
#: server's close and fails with a broken pipe, costing an attempt of every pooled connection.
KEEPALIVE_EXPIRY = 1.0

#: The largest answer body read, decoded: a normal map is a JPEG of at most 25,000,000 pixels
#: (the API's documented input limit), far below this; more is a broken or hostile server (an
#: endless body, a compression bomb), refused before it fills the memory.
MAX_MAP_BYTES = 128 * 1024 * 1024


class AnswerTooLargeError(httpx.DecodingError):
    """A body over :data:`MAX_MAP_BYTES` (an httpx error, so it is translated like theirs)."""


#: Uploads of at most this many bytes are sent as one multipart body built by
#: :func:`multipart_upload` (a copy of at most 256 KiB, cheaper than httpx's multipart stream by
#: about a third of a bare request's CPU); larger ones go through httpx's stream, which sends the
#: image without copying it.
INLINE_UPLOAD_BYTES = 256 * 1024

# What an HTML5 form does to a name or file name inside a quoted multipart parameter (the same
# replacements as httpx's multipart encoder): quotes and backslashes, and control characters
# but ESC, percent-encoded.
_FORM_ESCAPES = str.maketrans(
    {'"': "%22", "\\": "\\\\", **{chr(c): f"%{c:02X}" for c in range(0x20) if c != 0x1B}}
)


def multipart_upload(
    field: str, filename: str, content_type: str, data: bytes
) -> tuple[str, bytes]:
    """One file field as a ``multipart/form-data`` body (RFC 7578), the way httpx encodes
    ``files={field: (filename, data, content_type)}``: a fresh random boundary of 32 hex digits,
    the part's ``Content-Disposition`` and ``Content-Type``, the bytes, the closing boundary.

    Returns the request's ``Content-Type`` (with the boundary) and the body; the body holds a
    copy of ``data`` (``len(data)`` + about 200 bytes).
    """
    boundary = os.urandom(16).hex()
    disposition = f'form-data; name="{field.translate(_FORM_ESCAPES)}"'
    if filename:  # httpx leaves an empty file name out
        disposition += f'; filename="{filename.translate(_FORM_ESCAPES)}"'
    head = (
        f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}", b"".join((head, data, tail))


async def read_body(response: httpx.Response, cap: int, *, truncate: bool) -> bytes:
    """The decoded body: its first ``cap`` bytes when ``truncate`` (an error page needs no
    more), else all of it, refused with :class:`AnswerTooLargeError` past ``cap`` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > cap:
            if truncate:
                break
            raise AnswerTooLargeError(
                f"the answer's body is larger than {cap} bytes: not a normal map",
                request=response.request,
            )
    return b"".join(chunks)[:cap]


def describe_transport_error(exc: httpx.RequestError, secret: str) -> str:
    """httpx's message, and the operating system's reason when httpx hides it underneath
    ("All connection attempts failed" says less than "Connection refused"), without the key."""
    parts = [str(exc).strip()]
    cause: BaseException | None = exc.__cause__ or exc.__context__
    for _ in range(8):  # a short chain; never a cycle
        if cause is None:
            break
        if isinstance(cause, ssl.SSLError):  # its errno is OpenSSL's, not the system's
            reason = getattr(cause, "verify_message", None) or cause.reason or str(cause)
            parts.append(str(reason))
            break
        if isinstance(cause, OSError) and (cause.errno or cause.strerror):
            parts.append(os.strerror(cause.errno) if cause.errno else str(cause.strerror))
            break
        cause = cause.__cause__ or cause.__context__
    kept = [p for i, p in enumerate(parts) if p and not any(p in q for q in parts[:i])]
    text = ": ".join(kept) or "no detail"
    return scrub(f"{text} ({type(exc).__name__})", secret)


def translate(exc: httpx.RequestError, secret: str) -> APIConnectionError:
    """Our error for an httpx transport error (not chained to it: it holds the request)."""
    detail = describe_transport_error(exc, secret)
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"timed out: {detail}")
    if isinstance(exc, httpx.DecodingError):
        return APIConnectionError(f"the answer could not be decoded: {detail}")
    return APIConnectionError(f"connection failed: {detail}")


def host_label(url: httpx.URL) -> str:
    """``host[:port]`` for messages."""
    port = f":{url.port}" if url.port is not None else ""
    return f"{url.host}{port}"


@dataclass(frozen=True, slots=True)
class ImageHeader:
    """What the header of an answer's image says: read once, when the body is checked, and
    handed on so that the :class:`~clipnormals.NormalMap` need not open it again.

    Attributes:
        format: Pillow's format name (``"JPEG"`` for the API's answers).
        size: (width, height) in pixels.
        comment: the JPEG comment (COM marker) bytes, ``None`` when there is none.
    """

    format: str | None
    size: tuple[int, int]
    comment: bytes | None


def read_image_body(body: bytes) -> ImageHeader | str:
    """The header of ``body``, or why it is not a complete image (a string). Reads headers
    only; no full decode.

    A plain baseline or progressive JPEG (the API's answer) is read here; anything else, and
    any JPEG this reader does not vouch for, is opened by Pillow.
    """
    from PIL import Image, UnidentifiedImageError

    if not body:
        return "empty body"
    plain = _plain_jpeg_header(body)
    if plain is not None:
        return plain
    try:
        with Image.open(io.BytesIO(body)) as im:
            fmt = im.format
            width, height = im.size
            comment = im.info.get("comment")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        return f"not a decodable image ({exc})"
    except Image.DecompressionBombError:  # pragma: no cover - size is bounded by the upload
        return "image too large to decode"
    if fmt == "JPEG" and not _ends_with_eoi(body):
        return "JPEG without its end marker (truncated)"
    if fmt == "PNG" and b"IEND" not in body[-16:]:
        return "PNG without its end chunk (truncated)"
    return ImageHeader(
        format=fmt,
        size=(int(width), int(height)),
        comment=comment if isinstance(comment, bytes) else None,
    )


# JPEG segments of a plain answer: APP0, DQT, DHT, DRI, COM and a baseline, extended or
# progressive frame; any other marker sends the body to Pillow.
_APP0, _DQT, _DHT, _DRI, _COM, _SOS, _EOI = 0xE0, 0xDB, 0xC4, 0xDD, 0xFE, 0xDA, 0xD9
_PLAIN_FRAMES = frozenset({0xC0, 0xC1, 0xC2})


_PADDING = frozenset(b"\0\r\n ")


def _ends_with_eoi(body: bytes) -> bool:
    """Whether a JPEG ends with its EOI marker, padding after it allowed (without copying the
    body, as ``body.rstrip(...)`` would)."""
    end = len(body)
    while end and body[end - 1] in _PADDING:
        end -= 1
    return end >= 2 and body[end - 2] == 0xFF and body[end - 1] == 0xD9


def _plain_jpeg_header(body: bytes) -> ImageHeader | None:
    """The header of a JPEG made only of segments whose reading Pillow cannot refuse (JFIF
    APP0, well-formed quantization tables, Huffman tables, restart intervals, comments, one
    8-bit frame of 1, 3 or 4 components within Pillow's pixel limit, then a scan) that ends with
    its EOI marker; ``None`` for anything else, which Pillow then opens."""
    from PIL import Image

    end = len(body)
    if end < 4 or body[0] != 0xFF or body[1] != 0xD8:
        return None
    if not _ends_with_eoi(body):
        return None
    pos = 2
    size: tuple[int, int] | None = None
    comment: bytes | None = None
    while pos + 4 <= end:
        if body[pos] != 0xFF:
            return None
        marker = body[pos + 1]
        length = (body[pos + 2] << 8) | body[pos + 3]
        start, stop = pos + 4, pos + 2 + length
        if length < 2 or stop > end:
            return None
        if marker == _SOS:
            if size is None:
                return None
            return ImageHeader(format="JPEG", size=size, comment=comment)
        if marker in _PLAIN_FRAMES:
            if size is not None or length < 8:
                return None
            height = (body[start + 1] << 8) | body[start + 2]
            width = (body[start + 3] << 8) | body[start + 4]
            if body[start] != 8 or body[start + 5] not in (1, 3, 4):
                return None
            if not (width and height) or width * height > (Image.MAX_IMAGE_PIXELS or 0):
                return None  # Pillow's own limits decide
            size = (width, height)
        elif marker == _COM:
            comment = bytes(body[start:stop])
        elif marker == _DQT:
            table = start
            while table < stop:
                table += 1 + (64 if body[table] < 16 else 128)
            if table != stop:
                return None
        elif marker == _APP0:
            if length < 14 or body[start : start + 4] != b"JFIF":
                return None
        elif marker not in (_DHT, _DRI):
            return None
        pos = stop
    return None
