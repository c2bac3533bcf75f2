"""Configuration that comes from the environment, and the checks on where the key may go.

This is the only module that reads environment variables.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import sys
import urllib.parse
import urllib.request

import httpx

from .._errors import AuthenticationError, ClipnormalsError

__all__ = [
    "API_KEY_ENV",
    "BASE_URL_ENV",
    "DEFAULT_BASE_URL",
    "LOG_ENV",
    "REDIS_URL_ENV",
    "check_base_url",
    "configure_logging_from_env",
    "is_loopback_host",
    "proxy_environment",
    "redacted_url",
    "resolve_api_key",
    "resolve_base_url",
    "resolve_redis_url",
]

API_KEY_ENV = "CLIPDROP_API_KEY"
BASE_URL_ENV = "CLIPDROP_BASE_URL"
LOG_ENV = "CLIPNORMALS_LOG"
REDIS_URL_ENV = "CLIPNORMALS_REDIS_URL"
_REDIS_SCHEMES = ("redis", "rediss", "unix")
DEFAULT_BASE_URL = "https://clipdrop-api.co"


def resolve_api_key(api_key: str | None, *, env_var: str = API_KEY_ENV) -> str:
    """The key given, else the one in ``env_var``; raise before any I/O when there is none."""
    key = api_key if api_key is not None else os.environ.get(env_var)
    if key is None or not key.strip():
        raise AuthenticationError(
            f"no API key: pass api_key=... or set the {env_var} environment variable",
            status_code=401,
        )
    key = key.strip()
    bad = [ch for ch in key if not "!" <= ch <= "~"]
    if bad:
        # httpx would refuse it later with an error that quotes the whole key. Say what is wrong
        # without showing the key, or even the character (it may be part of the secret).
        kinds = sorted(
            {"a space" if ch == " " else "a control character" if ch < " " else "a non-ASCII one"
             for ch in bad}
        )  # fmt: skip
        raise AuthenticationError(
            f"the API key may hold only visible ASCII characters; it has {' and '.join(kinds)} "
            f"({len(bad)} in all; pasted from a document?)",
            status_code=401,
        )
    return key


def resolve_base_url(base_url: str | None) -> str:
    """The URL given, else ``CLIPDROP_BASE_URL``, else the public API."""
    if base_url is not None:
        return base_url
    return os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL


def resolve_redis_url(redis_url: str | None) -> str | None:
    """The Redis URL given, else ``CLIPNORMALS_REDIS_URL``, else ``None`` (nothing shared).

    Raises:
        ClipnormalsError: the URL is not ``redis://``, ``rediss://`` or ``unix://``; the
            message shows it without its password (:func:`redacted_url`).
    """
    url = redis_url if redis_url is not None else os.environ.get(REDIS_URL_ENV)
    if url is None or not url.strip():
        return None
    url = url.strip()
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        raise ClipnormalsError(
            f"invalid Redis URL {redacted_url(url)!r}: expected redis://[:password@]host:port/db"
        ) from None
    if parts.scheme not in _REDIS_SCHEMES or not (parts.hostname or parts.path):
        raise ClipnormalsError(
            f"invalid Redis URL {redacted_url(url)!r}: expected redis://host:port/db, "
            "rediss://... (TLS) or unix:///path/to/socket"
        )
    return url


def redacted_url(url: str) -> str:
    """``url`` with the password of its user part (and a ``password=`` query) as ``***``.

    A user part without a colon is hidden whole: it may be the password.

    Example:
        >>> redacted_url("redis://:s3cret@cache:6379/0")
        'redis://:***@cache:6379/0'
        >>> redacted_url("unix:///run/redis.sock?password=s3cret&db=1")
        'unix:///run/redis.sock?password=***&db=1'
    """
    text = re.sub(r"(?<=://)(?:([^/@:]*):)?[^/@]*@", _redact_userinfo, url)
    return re.sub(r"(?i)(password=)[^&#]*", r"\1***", text)


def _redact_userinfo(match: re.Match[str]) -> str:
    # user:password@ -> user:***@; a lone token@ may be the password: ***@
    return f"{match.group(1)}:***@" if match.group(1) is not None else "***@"


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and for literal addresses in 127.0.0.0/8 or ``::1``.

    Names under ``.localhost`` do not count: what they resolve to is up to the resolver.

    Example:
        >>> [is_loopback_host(h) for h in ("127.0.0.2", "[::1]", "localhost", "a.localhost")]
        [True, True, True, False]
    """
    host = host.strip("[]").lower()
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_base_url(base_url: str) -> httpx.URL:
    """Parse ``base_url`` and refuse plain http to anything but a loopback host.

    The API key travels in a header; over plain http anyone on the path could read it.
    """
    try:
        url = httpx.URL(base_url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ClipnormalsError(f"invalid base_url {base_url!r}: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ClipnormalsError(f"invalid base_url {base_url!r}: expected http(s)://host[:port]")
    if url.scheme == "http" and not is_loopback_host(url.host):
        raise ClipnormalsError(
            f"refusing to send the API key over plain http to {url.host}: "
            "use https, or a loopback host (127.0.0.1, localhost, ::1) for an emulator"
        )
    return url


def proxy_environment(scheme: str, host: str) -> list[str]:
    """The proxy environment variables that would apply to a ``scheme`` request to ``host``:
    ``HTTPS_PROXY`` for https, ``HTTP_PROXY`` for http, ``ALL_PROXY`` for both (either case);
    empty when ``NO_PROXY`` exempts the host, or for a loopback host (the client never sends
    those through a proxy).

    Example:
        >>> proxy_environment("http", "127.0.0.1")
        []
    """
    if is_loopback_host(host):
        return []
    # proxy_bypass_environment reads NO_PROXY as httpx does (typeshed lacks it).
    if urllib.request.proxy_bypass_environment(host):  # type: ignore[attr-defined]
        return []
    names = [f"{scheme.upper()}_PROXY", f"{scheme.lower()}_proxy", "ALL_PROXY", "all_proxy"]
    return [name for name in names if os.environ.get(name)]


_LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO}
_LOG_FORMAT = "[%(asctime)s %(name)s %(levelname)s] %(message)s"


def configure_logging_from_env(logger: logging.Logger) -> None:
    """``CLIPNORMALS_LOG=debug|info``: show the library's log lines on stderr at that level.

    Like ``OPENAI_LOG``: a switch for a quick look without configuring logging. Without it the
    library only has a ``NullHandler`` and the application decides. Set once per process;
    a value other than ``debug`` or ``info`` is ignored. When the application has configured
    logging too, each line is shown once, through the application's handlers.
    """
    level = _LOG_LEVELS.get(os.environ.get(LOG_ENV, "").strip().lower())
    if level is None or any(getattr(h, "_clipnormals_env", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_LOG_FORMAT))
    # Once the application configures logging (``logging.basicConfig``, before or after this),
    # the lines reach its handlers by propagation: this one steps aside, or each would show twice.
    handler.addFilter(lambda _record: not logging.getLogger().handlers)
    handler._clipnormals_env = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
