"""Type-checked use of the public API (mypy --strict runs over this file; it is never executed)."""

from __future__ import annotations

import httpx
import numpy as np

import clipnormals


async def typed_usage(paths: list[str]) -> None:
    client = clipnormals.AsyncClient(
        api_key="k",
        base_url="http://127.0.0.1:8765",
        rate_limit=clipnormals.RateLimit(requests=60, per=60.0, burst=1),
        max_concurrency=8,
        retry=clipnormals.RetryPolicy(attempts=5, total=120.0),
        credits=clipnormals.CreditPolicy(reserve=5, budget=100),
        timeout=httpx.Timeout(30.0),
        transport=httpx.MockTransport(lambda request: httpx.Response(500)),
    )
    async with client:
        nm: clipnormals.NormalMap = await client.surface_normals(paths[0])
        jpeg: bytes = nm.jpeg
        normals: np.ndarray = nm.normals
        mask: np.ndarray = nm.mask
        remaining: int | None = nm.credits_remaining
        async for item in client.map(paths):
            source: str = item.source
            if item.ok:
                result: clipnormals.NormalMap = item.unwrap()
                del result
            else:
                error: clipnormals.ClipnormalsError | None = item.error
                del error
            del source
        ledger: clipnormals.Ledger = client.credits
        left: int | None = ledger.remaining
        stats: clipnormals.ClientStats = client.stats
        rpm: float | None = stats.requests_per_minute
    del jpeg, normals, mask, remaining, left, rpm


def typed_sync(path: str) -> clipnormals.NormalMap:
    with clipnormals.Client(api_key="k") as client:
        for item in client.map([path]):
            if isinstance(item.error, clipnormals.CreditBudgetError):
                break
        return client.surface_normals(path)


def typed_mistakes() -> None:
    # Each line must be an error for both type checkers: mypy (warn_unused_ignores, in strict)
    # and pyright (reportUnnecessaryTypeIgnoreComment) fail if an ignore is not needed.
    clipnormals.Client(max_concurency=4)  # type: ignore[call-arg]
    clipnormals.AsyncClient(max_concurency=4)  # type: ignore[call-arg]
    clipnormals.Client(rate_limit="60/60")  # type: ignore[arg-type]


async def typed_tagged_map(jobs: list[tuple[str, bytes]]) -> None:
    async with clipnormals.AsyncClient() as client, client.map(jobs, image=lambda j: j[1]) as it:
        async for item in it:
            tag: str = item.source[0]
            del tag


async def typed_shared_key(url: str) -> None:
    from clipnormals.redis import Claim, RedisClaims, RedisLedger, RedisLimiter

    rl = clipnormals.RateLimit(requests=60, per=60.0)
    policy = clipnormals.CreditPolicy(budget=500)
    async with (
        RedisLimiter(rl, url=url, name="k") as limiter,
        RedisLedger(policy, url=url, name="k", lease=30.0) as ledger,
        RedisClaims(url=url, name="k") as claims,
        clipnormals.AsyncClient(rate_limit=rl, limiter=limiter, ledger=ledger) as client,
    ):
        shared: clipnormals.Ledger = client.credits
        claim: Claim = await claims.claim("sha256")
        taken: bool = claim.taken_over
        left: int | None = shared.remaining
        del taken, left
    with clipnormals.Client(ledger=RedisLedger(url=url)) as blocking:
        uncertain: int = blocking.credits.uncertain
        del uncertain
