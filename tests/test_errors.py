"""The error types one at a time: the status table, what an error keeps, Retry-After parsing.

The client-level tests (tests/test_client.py, tests/test_secrets.py) go through a whole request;
these pin the rules of ``clipnormals._errors`` at their edges, where a slip changes nothing in a
typical exchange: a key header the server echoes, a key that JSON escapes, a gateway's body.
"""

from __future__ import annotations

import email.utils
import json
import urllib.parse

import httpx
import pytest

import clipnormals
from clipnormals import APIStatusError
from clipnormals._errors import parse_retry_after

from .fakeapi import prepared

# A key with characters that JSON escapes (", \) and that percent-encoding changes (/, +).
KEY = 'sk-q"u\\o/te+1'
FORMS = {
    "raw": KEY,
    "json": json.dumps(KEY)[1:-1],
    "percent": urllib.parse.quote(KEY, safe=""),
    "repr": repr(KEY)[1:-1],  # how a message quoting a snippet of the body would show it
}


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, clipnormals.BadRequestError),
        (401, clipnormals.AuthenticationError),
        (402, clipnormals.InsufficientCreditsError),
        (403, clipnormals.PermissionDeniedError),
        (406, clipnormals.NotAcceptableError),
        (429, clipnormals.RateLimitError),
        (500, clipnormals.ServerError),
        (503, clipnormals.ServerError),
        (599, clipnormals.ServerError),
        (404, clipnormals.UnexpectedResponseError),
        (418, clipnormals.UnexpectedResponseError),
        (600, clipnormals.UnexpectedResponseError),
    ],
)
def test_every_status_gets_its_type(status: int, kind: type[APIStatusError]) -> None:
    exc = APIStatusError.from_parts(status, {}, b"")
    assert type(exc) is kind
    assert exc.status_code == status


@pytest.mark.parametrize("name", ["x-api-key", "X-Api-Key", "authorization", "cookie"])
def test_credential_headers_are_dropped_even_without_a_secret(name: str) -> None:
    # A server (or a proxy) that echoes the request's credentials in its answer's headers.
    response = httpx.Response(400, headers={name: "sk-echoed", "x-request-id": "r-1"})
    exc = APIStatusError.from_response(response)
    assert exc.headers == {"x-request-id": "r-1"}
    exc = APIStatusError.from_response(response, secret="sk-echoed")
    assert exc.headers == {"x-request-id": "r-1"}  # dropped, not kept as "***"


@pytest.mark.parametrize("form", ["raw", "json", "percent"])
def test_every_form_of_the_key_is_scrubbed_from_what_an_error_keeps(form: str) -> None:
    echoed = FORMS[form]
    exc = APIStatusError.from_parts(
        502,
        {"content-type": "text/html", "x-echo": echoed},
        f"<html>proxy: you sent x-api-key {echoed}</html>".encode(),
        secret=KEY,
    )
    _assert_no_form_in(exc)
    assert exc.headers["x-echo"] == "***"
    assert "you sent x-api-key ***" in exc.message


def test_a_json_echo_is_scrubbed_in_the_body_and_in_the_error_text() -> None:
    body = json.dumps({"error": f"bad key {KEY}"}).encode()  # the body holds the escaped form
    assert FORMS["json"].encode() in body
    exc = APIStatusError.from_parts(400, {"content-type": "application/json"}, body, secret=KEY)
    _assert_no_form_in(exc)
    assert exc.error == "bad key ***"


def _assert_no_form_in(exc: APIStatusError) -> None:
    kept = [exc.message, str(exc), repr(exc), exc.body.decode(), str(exc.error), repr(exc.headers)]
    for text in kept:
        for form, shown in FORMS.items():
            assert shown not in text, (form, text)


@pytest.mark.parametrize("field", ["error", "message", "detail"])
def test_the_error_text_is_read_from_a_gateways_field_too(field: str) -> None:
    exc = APIStatusError.from_parts(502, {}, json.dumps({field: "upstream timed out"}).encode())
    assert exc.error == "upstream timed out"
    assert "upstream timed out" in exc.message


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("0", 0.0),
        ("2.5", 2.5),
        ("-3", 0.0),  # never a negative wait
        ("inf", None),
        ("nan", None),
        ("-inf", None),
        ("soon", None),
        ("", None),
    ],
)
def test_retry_after_seconds(header: str, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds


def test_retry_after_dates_count_from_now() -> None:
    now = 1_700_000_000.0
    later = email.utils.formatdate(now + 30, usegmt=True)
    earlier = email.utils.formatdate(now - 30, usegmt=True)
    assert parse_retry_after(later, now=now) == pytest.approx(30.0)
    assert parse_retry_after(earlier, now=now) == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00", now=now) is None  # no zone: unknown


def test_a_429_error_carries_its_retry_after() -> None:
    exc = APIStatusError.from_parts(429, {"retry-after": "7"}, b"")
    assert isinstance(exc, clipnormals.RateLimitError)
    assert exc.retry_after == 7.0


@pytest.mark.anyio
@pytest.mark.parametrize("ctype", ["text/html", "text/plain", "application/json"])
async def test_a_key_echoed_in_a_body_that_is_not_json_never_shows_escaped(ctype: str) -> None:
    """A proxy's page quoting the key: the message shows a snippet of the body, and a repr of
    it would double the key's backslashes, a form scrubbing after the fact cannot see."""

    def echo(request: httpx.Request) -> httpx.Response:
        key = request.headers["x-api-key"]
        return httpx.Response(
            502,
            content=f"<p>upstream refused x-api-key: {key}</p>",
            headers={"content-type": ctype},
        )

    policy = clipnormals.RetryPolicy(attempts=1)
    async with clipnormals.AsyncClient(
        api_key=KEY, transport=httpx.MockTransport(echo), retry=policy
    ) as client:
        with pytest.raises(clipnormals.ServerError) as info:
            await client.surface_normals(prepared())
    _assert_no_form_in(info.value)
    assert "x-api-key: ***" in info.value.message
