"""What the CLI commands do once their options are parsed: async glue, signals, output.

Part of the ``cli`` extra (rich). Kept apart from the typer declarations in ``_cli`` so that the
behaviour can be read (and tested) without the option plumbing.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
from rich.console import Console

from .._atomic import atomic_write_bytes
from .._batch.dryrun import DryRunReport, dry_run
from .._batch.runner import run_batch
from .._batch.types import BatchConfig, BatchControl, BatchReporter, BatchSummary, ExitCode
from .._core.client import AsyncClient
from .._core.config import API_KEY_ENV, resolve_api_key
from .._core.credits import CreditPolicy
from .._core.limiter import RateLimit
from .._errors import (
    AuthenticationError,
    ClientClosedError,
    ClipnormalsError,
    CreditBudgetError,
    InsufficientCreditsError,
    InvalidImageError,
    PermissionDeniedError,
)
from .._images.prepare import PrepareOptions
from .output import UsageError
from .progress import PlainReporter, RichReporter, format_duration, format_rate

__all__ = [
    "ClientOptions",
    "dry_run_command",
    "normals_command",
    "open_client",
    "run_batch_command",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientOptions:
    """How to build the client, from the command line (the key itself is read late)."""

    rate: RateLimit
    concurrency: int = 8
    max_credits: int | None = None
    reserve: int = 0
    timeout: float = 60.0
    strict: bool = False
    api_key_env: str = API_KEY_ENV
    base_url: str | None = None
    emulator: bool = False
    emulator_credits: int = 1000


@asynccontextmanager
async def open_client(options: ClientOptions) -> AsyncIterator[AsyncClient]:
    """The client the options describe; with ``emulator``, pointed at a fresh loopback emulator."""

    def make(key: str, base_url: str | None) -> AsyncClient:
        return AsyncClient(
            api_key=key,
            base_url=base_url,
            rate_limit=options.rate,
            max_concurrency=options.concurrency,
            credits=CreditPolicy(reserve=options.reserve, budget=options.max_credits),
            timeout=options.timeout,
            prepare=PrepareOptions(strict=options.strict),
        )

    if options.emulator:
        try:
            from ..emulator import local_emulator
        except ImportError as exc:  # its message names the extra to install
            raise UsageError(str(exc)) from None

        rate = options.rate
        emulator = local_emulator(
            requests=rate.requests, per=rate.per, credits=options.emulator_credits
        )
        async with emulator as (url, key), make(key, url) as client:
            yield client
        return
    try:
        key = resolve_api_key(None, env_var=options.api_key_env)
    except AuthenticationError:
        raise UsageError(
            f"no API key: set {options.api_key_env}, or name another variable with "
            "--api-key-env (--emulator needs no key)"
        ) from None
    try:
        client = make(key, options.base_url)
    except ClipnormalsError as exc:
        raise UsageError(exc.message) from None
    async with client:
        yield client


def choose_reporter(plain: bool | None, verbose: bool) -> BatchReporter:
    """A progress bar on a terminal, else one plain line per image."""
    if plain is None:
        plain = not (sys.stdout.isatty() and sys.stderr.isatty())
    if plain:
        return PlainReporter(sys.stdout, verbose=verbose)
    return RichReporter(verbose=verbose)


async def run_batch_command(
    config: BatchConfig, options: ClientOptions, reporter: BatchReporter
) -> BatchSummary:
    """Run a batch with Ctrl-C handling: once stops gracefully, twice aborts."""
    control = BatchControl()
    async with open_client(options) as client, anyio.create_task_group() as tg:
        tg.start_soon(_watch_signals, control, reporter)
        try:
            summary = await run_batch(config, client=client, reporter=reporter, control=control)
        finally:
            tg.cancel_scope.cancel()
    return summary


async def _watch_signals(control: BatchControl, reporter: BatchReporter) -> None:
    signals = [signal.SIGINT, signal.SIGTERM]
    with anyio.open_signal_receiver(*signals) as received:
        async for _signum in received:
            if not control.stop_requested:
                reporter.phase(
                    "stopping: no new images are sent, those in flight finish "
                    "(Ctrl-C again to abort at once)"
                )
                control.stop()
            else:
                reporter.phase("aborting")
                control.abort()


def dry_run_lines(report: DryRunReport, rate: RateLimit) -> list[str]:
    """The dry run's report as text lines."""
    lines = ["dry run: nothing was sent and nothing was written"]
    ignored = f" ({report.ignored} other files ignored)" if report.ignored else ""
    lines.append(f"{report.total:>6} images found{ignored}")
    lines.append(f"{report.complete:>6} already done (would be skipped)")
    lines.append(f"{report.copies:>6} identical to another image (copied, no credit)")
    changed = ", ".join(f"{n} {kind}" for kind, n in sorted(report.changes.items()))
    lines.append(
        f"{report.to_send:>6} to upload: {report.credits_needed} credits"
        + (f" ({changed})" if changed else "")
    )
    lines.append(f"{len(report.invalid):>6} would be rejected")
    lines.extend(f"         {source}: {reason}" for source, reason in report.invalid)
    if report.balance is None:
        lines.append(
            "balance: unknown (the API reports it only with a result; a run shows it live)"
        )
    else:
        credits, when = report.balance
        verdict = "enough" if not report.short else f"{report.short} short"
        lines.append(f"balance: {credits} credits as last seen at {when}: {verdict}")
    when = format_duration(report.seconds)
    lines.append(f"time:    about {when} at {format_rate(rate)} (the quota decides, not the CPU)")
    return lines


async def dry_run_command(config: BatchConfig, rate: RateLimit, out: Console) -> ExitCode:
    """Print what a run would do; exit 1 when some inputs would be rejected, 3 when short."""
    report = await dry_run(config, rate_limit=rate)
    for line in dry_run_lines(report, rate):
        out.print(line, markup=False, highlight=False)
    if report.invalid:
        return ExitCode.FAILED
    if report.short:
        return ExitCode.CREDITS
    return ExitCode.OK


async def normals_command(
    image: Path,
    output: Path,
    options: ClientOptions,
    *,
    flip_x: bool,
    flip_y: bool,
    npz: bool,
    out: Console,
) -> ExitCode:
    """One image: write its normal map (the response bytes) and optionally the ``.npz``."""
    async with open_client(options) as client:
        try:
            nm = await client.surface_normals(image)
        except InvalidImageError as exc:
            out.print(f"rejected before upload: {exc.message}", markup=False)
            return ExitCode.FAILED
        except (CreditBudgetError, InsufficientCreditsError) as exc:
            out.print(f"not done: {exc.message}", markup=False)
            return ExitCode.CREDITS
        except (AuthenticationError, PermissionDeniedError, ClientClosedError) as exc:
            out.print(f"refused: {exc.message}", markup=False)
            return ExitCode.AUTH
        except ClipnormalsError as exc:
            out.print(f"failed: {type(exc).__name__}: {exc.message}", markup=False)
            return ExitCode.FAILED
        await anyio.to_thread.run_sync(atomic_write_bytes, output, nm.jpeg)
        written = [str(output)]
        if npz:
            from .._batch.outputs import npz_bytes

            def make_npz() -> bytes:
                return npz_bytes(nm.with_convention(flip_x=flip_x, flip_y=flip_y))

            npz_path = output.with_suffix(".npz")
            data = await anyio.to_thread.run_sync(make_npz)
            await anyio.to_thread.run_sync(atomic_write_bytes, npz_path, data)
            written.append(str(npz_path))
        left = client.credits.remaining
        out.print(
            f"wrote {', '.join(written)}" + ("" if left is None else f" ({left} credits left)"),
            markup=False,
            highlight=False,
        )
    return ExitCode.OK
