"""``clipnormals emulator``: serve the local emulator on a loopback port until Ctrl-C.

Needs the ``emulator`` extra (starlette, uvicorn) when run.
"""

from __future__ import annotations

from typing import Annotated

import typer

from .output import fail

__all__ = ["emulator_command"]


def emulator_command(
    host: Annotated[
        str, typer.Option(help="Address to listen on (loopback unless --allow-public).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free one).")] = 8765,
    keys: Annotated[
        str, typer.Option(help="API keys and their credits: KEY:CREDITS[,KEY:CREDITS...].")
    ] = "demo:100",
    rate: Annotated[
        str, typer.Option(help="Server-side limit per key, REQUESTS/SECONDS, or 'none'.")
    ] = "60/60",
    policy: Annotated[
        str, typer.Option(help="How the limit counts: sliding, fixed, token or nginx.")
    ] = "sliding",
    burst: Annotated[int, typer.Option(min=0, help="Burst of the nginx policy.")] = 5,
    retry_after: Annotated[
        str, typer.Option(help="Retry-After on 429: seconds, precise (decimals) or off.")
    ] = "seconds",
    latency: Annotated[
        str,
        typer.Option(help="Time per success: SECONDS, uniform:LOW,HIGH, lognormal:MEDIAN,SIGMA."),
    ] = "0",
    faults: Annotated[
        str,
        typer.Option(
            help="Injected faults, e.g. 5xx=0.05,429=0.01,reset=0.01,stall=0.01,"
            "stall-seconds=30 or script=500+reset+ok."
        ),
    ] = "",
    cost: Annotated[int, typer.Option(min=0, help="Credits per success.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the latency and fault draws.")] = 0,
    admin: Annotated[
        bool, typer.Option("--admin", help="Serve /_emulator/stats, /credits, /revoke, /reset.")
    ] = False,
    consumed_header: Annotated[
        bool,
        typer.Option(help="Send x-credits-consumed (off: mimic older API versions)."),
    ] = True,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    allow_public: Annotated[
        bool,
        typer.Option(
            "--allow-public",
            help="Listen on a non-loopback address too (anyone who reaches it can use the keys).",
        ),
    ] = False,
) -> None:
    """Serve a local emulator of the API (synthetic normal maps) on a loopback port.

    Point the client at it with CLIPDROP_BASE_URL=http://HOST:PORT and one of --keys as
    CLIPDROP_API_KEY, or use `clipnormals batch --emulator` for a throwaway one.
    """
    try:
        from ..emulator import (
            EmulatorConfig,
            ServerLimit,
            parse_faults,
            parse_keys,
            parse_latency,
            parse_rate,
            serve,
        )
    except ImportError as exc:
        fail(str(exc))
    try:
        limit = None
        if rate.strip().lower() != "none":
            requests, per = parse_rate(rate)
            limit = ServerLimit(
                requests=requests,
                per=per,
                policy=policy,  # type: ignore[arg-type]
                burst=burst,
                retry_after=retry_after,  # type: ignore[arg-type]
            )
        config = EmulatorConfig(
            keys=parse_keys(keys),
            limit=limit,
            latency=parse_latency(latency),
            faults=parse_faults(faults) if faults.strip() else EmulatorConfig().faults,
            cost=cost,
            seed=seed,
            admin=admin,
            consumed_header=consumed_header,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    quota = "no limit" if limit is None else f"{limit.requests} per {limit.per:g}s ({limit.policy})"

    def listening(url: str) -> None:
        print(f"emulator listening on {url}: {len(config.keys)} key(s), {quota}", flush=True)
        print(f"use it: CLIPDROP_BASE_URL={url} CLIPDROP_API_KEY=<a key from --keys>", flush=True)
        print("its normal maps are synthetic; Ctrl-C stops it", flush=True)

    try:
        serve(
            config,
            host=host,
            port=port,
            log_level=log_level,
            on_listening=listening,
            allow_public=allow_public,
        )
    except (ValueError, OSError) as exc:
        # The server speaks of its Python argument; the command has a flag for it.
        fail(
            str(exc)
            .replace("pass allow_public=True", "pass --allow-public")
            .replace("allow_public=True", "--allow-public")
        )
