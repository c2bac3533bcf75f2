"""The API key never shows: not in errors, reprs, logs or tracebacks."""

from __future__ import annotations

import logging
import traceback

import httpx
import pytest

import clipnormals

from .fakeapi import KEY, FakeAPI, error, prepared

pytestmark = pytest.mark.anyio


def _everything_said(exc: BaseException) -> str:
    parts = [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    if isinstance(exc, clipnormals.APIStatusError):
        parts += [repr(exc.headers), exc.body.decode("latin-1"), str(exc.error)]
    if isinstance(exc, clipnormals.ClientHaltedError):
        parts.append(_everything_said(exc.cause))
    return "\n".join(parts)


@pytest.mark.parametrize(
    "fault",
    [
        error(400, f"bad key {KEY} echoed by a careless server"),
        error(403, "Invalid api key"),
        httpx.Response(500, text=f"<html>proxy error for x-api-key: {KEY}</html>"),
        httpx.ConnectError(f"failed to connect, headers={{'x-api-key': '{KEY}'}}"),
        httpx.ReadTimeout("timed out"),
    ],
)
async def test_key_absent_from_errors_and_logs(
    fault: httpx.Response | Exception, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger: ours, httpx's, httpcore's
    api = FakeAPI(script=[fault] * 3)
    async with clipnormals.AsyncClient(
        api_key=KEY, transport=api.transport(), retry=clipnormals.RetryPolicy(attempts=2)
    ) as client:
        with pytest.raises(clipnormals.ClipnormalsError) as info:
            await client.surface_normals(prepared())
        assert KEY not in repr(client)
        assert KEY not in repr(client.credits)
        if client.halted:
            with pytest.raises(clipnormals.ClientClosedError) as again:
                await client.surface_normals(prepared())
            assert KEY not in _everything_said(again.value)
    assert KEY not in _everything_said(info.value)
    assert caplog.records, "the failure should have been logged"
    for record in caplog.records:
        assert KEY not in record.getMessage()
    assert KEY not in caplog.text


async def test_key_absent_from_client_repr_and_vars() -> None:
    client = clipnormals.AsyncClient(api_key=KEY, transport=FakeAPI().transport())
    try:
        assert KEY not in repr(client)
        assert KEY not in str(vars(client))
    finally:
        await client.aclose()


def test_key_with_newline_is_refused_without_echo() -> None:
    with pytest.raises(clipnormals.AuthenticationError) as info:
        clipnormals.AsyncClient(api_key=KEY + "\n" + KEY)
    assert KEY not in _everything_said(info.value)
