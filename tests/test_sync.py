"""The blocking facade runs the same machinery on a background event loop."""

from __future__ import annotations

import pytest

import clipnormals

from .fakeapi import KEY, FakeAPI, prepared


def _client(api: FakeAPI, **kwargs: object) -> clipnormals.Client:
    return clipnormals.Client(
        api_key=KEY,
        transport=api.transport(),
        rate_limit=clipnormals.RateLimit(requests=1000, per=1.0),
        **kwargs,
    )


def test_blocking_calls_and_map() -> None:
    api = FakeAPI(credits=5)
    with _client(api) as client:
        nm = client.surface_normals(prepared())
        assert nm.credits_remaining == 4
        items = list(client.map([prepared(i) for i in range(6)]))
        assert client.credits.remaining == 0
        assert "api_key='***'" in repr(client)
    assert sum(i.ok for i in items) == 4
    assert sum(isinstance(i.error, clipnormals.CreditBudgetError) for i in items) == 2
    assert 402 not in api.statuses


def test_blocking_errors_are_the_same_types() -> None:
    from .fakeapi import error

    api = FakeAPI(script=[error(400, "image_file is required")])
    with _client(api) as client, pytest.raises(clipnormals.BadRequestError, match="required"):
        client.surface_normals(prepared())


def test_leaving_map_early_cancels_the_rest() -> None:
    api = FakeAPI(credits=None)
    with _client(api, max_concurrency=2) as client:
        for n, _item in enumerate(client.map(prepared(i % 3) for i in range(1000))):
            if n == 3:
                break
        assert client.credits.reserved == 0
    assert len(api.arrivals) < 20


def test_closing_after_a_map_delivered_everything_ends_it_and_before_raises() -> None:
    api = FakeAPI(credits=None)
    client = _client(api)
    items = client.map([prepared(0), prepared(1)])
    got = [next(items), next(items)]
    client.close()
    assert list(items) == []  # nothing was left: the loop ends as it would have
    assert all(item.ok for item in got)

    client = _client(api)
    items = client.map(prepared(i) for i in range(50))
    next(items)
    client.close()
    with pytest.raises(clipnormals.ClientClosedError):
        list(items)  # sources were left


def test_construction_errors_surface_and_leave_no_thread() -> None:
    import threading

    before = threading.active_count()
    with pytest.raises(ValueError, match="max_concurrency"):
        clipnormals.Client(api_key=KEY, max_concurrency=0)
    assert threading.active_count() <= before
