"""What the CLI commands do once their options are parsed: async glue, signals, output.

Part of the ``cli`` extra (rich). Kept apart from the typer declarations in ``app`` so that the
behaviour can be read (and tested) without the option plumbing. What an error means (its exit
code, its words, its advice) is looked up in the batch's outcome table, never decided here.
"""

from __future__ import annotations

import hashlib
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
from rich.console import Console

from .._atomic import atomic_write_bytes
from .._batch.config import BatchConfig
from .._batch.control import BatchControl
from .._batch.discover import NotRegularFileError, open_regular
from .._batch.dryrun import DryRunReport, dry_run
from .._batch.errors import SharedStateError
from .._batch.events import BatchReporter
from .._batch.folder import check_output_file, require_short_name
from .._batch.outcomes import STOPS, ExitCode, RunContext, classify
from .._batch.progress import BatchSummary
from .._batch.runner import run_batch
from .._batch.writing import npz_bytes
from .._core.client import AsyncClient
from .._core.config import API_KEY_ENV, resolve_api_key
from .._core.credits import CreditPolicy, Ledger
from .._core.limiter import Limiter, RateLimit
from .._core.retry import RetryPolicy
from .._errors import AuthenticationError, ClipnormalsError
from .._images.prepare import PrepareOptions
from .output import UsageError, plural, say
from .progress import PlainReporter, RichReporter, format_duration, format_rate

__all__ = [
    "ClientOptions",
    "choose_reporter",
    "dry_run_command",
    "dry_run_lines",
    "normals_command",
    "open_client",
    "run_batch_command",
    "shared_name",
]

# A dry run sends nothing, so it needs no key; this one is never sent anywhere.
_DRY_RUN_KEY = "dry-run-sends-nothing"


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientOptions:
    """How to build the client, from the command line (the key itself is read late)."""

    rate: RateLimit
    concurrency: int = 8
    max_credits: int | None = None
    reserve: int = 0
    timeout: float = 60.0
    strict: bool = False
    retry: RetryPolicy | None = None
    api_key_env: str = API_KEY_ENV
    base_url: str | None = None
    emulator: bool = False
    emulator_credits: int = 1000
    redis_url: str | None = None
    redis_name: str | None = None


def shared_name(key: str) -> str:
    """The name under which the runs on one key share its quota and credits in Redis:
    ``key-`` and the first 16 hex digits of the SHA-256 of the key (never the key itself).

    Example:
        >>> shared_name("example-key")
        'key-c018c41c1afaf2c0'
    """
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def _read_key(options: ClientOptions) -> str:
    try:
        return resolve_api_key(None, env_var=options.api_key_env)
    except AuthenticationError:
        raise UsageError(
            f"no API key: set {options.api_key_env}, or name another variable with "
            "--api-key-env (--emulator needs no key)"
        ) from None


@asynccontextmanager
async def open_client(
    options: ClientOptions, *, control: BatchControl | None = None, offline: bool = False
) -> AsyncIterator[AsyncClient]:
    """The client the options describe.

    With ``emulator``, it is pointed at a fresh loopback emulator. ``offline`` (a dry run)
    builds a client that will send nothing: it needs no key and starts no emulator.
    """

    policy = CreditPolicy(reserve=options.reserve, budget=options.max_credits)
    shared: tuple[Limiter, Ledger] | None = None

    def make(key: str, base_url: str | None) -> AsyncClient:
        limiter, ledger = shared if shared is not None else (None, None)
        return AsyncClient(
            api_key=key,
            base_url=base_url,
            rate_limit=options.rate,
            max_concurrency=options.concurrency,
            retry=options.retry,
            credits=None if ledger is not None else policy,
            limiter=limiter,
            ledger=ledger,
            timeout=options.timeout,
            prepare=PrepareOptions(strict=options.strict),
        )

    if offline:
        try:
            key = resolve_api_key(None, env_var=options.api_key_env)
        except AuthenticationError:
            key = _DRY_RUN_KEY
        base_url = None if options.emulator else options.base_url
        async with _made(make, key, base_url) as client:
            yield client
        return
    if options.emulator:
        try:
            from ..emulator import local_emulator
        except ImportError as exc:  # its message names the extra to install
            raise UsageError(str(exc)) from None

        rate = options.rate
        emulator = local_emulator(
            requests=rate.requests, per=rate.per, credits=options.emulator_credits
        )
        async with emulator as (url, key), AsyncExitStack() as stack:
            if options.redis_url is not None:
                shared = await _open_shared(stack, options, policy, key)
            yield await stack.enter_async_context(make(key, url))
        return
    key = _read_key(options)
    async with AsyncExitStack() as stack:
        if options.redis_url is not None:
            shared = await _open_shared(stack, options, policy, key)
        yield await stack.enter_async_context(_made(make, key, options.base_url))


async def _open_shared(
    stack: AsyncExitStack, options: ClientOptions, policy: CreditPolicy, key: str
) -> tuple[Limiter, Ledger]:
    """A limiter and a ledger shared through the Redis server of ``options.redis_url``, under
    the key's shared name; closed with ``stack``. Reads the ledger once, so that a server that
    cannot be reached is found before anything is sent.

    Raises:
        UsageError: the ``redis`` extra is missing, or ``--redis-name`` is not a valid name.
        SharedStateError: the server cannot be reached or refuses (no password in the words).
    """
    try:
        from .._redis.ledger import RedisLedger
        from .._redis.limiter import RedisLimiter
    except ImportError as exc:  # its message names the extra to install
        raise UsageError(str(exc)) from None
    name = options.redis_name or shared_name(key)
    url = options.redis_url
    try:
        limiter = RedisLimiter(options.rate, url=url, name=name)
        stack.push_async_callback(limiter.aclose)
        ledger = RedisLedger(policy, url=url, name=name)
    except ValueError as exc:
        raise UsageError(f"--redis-url/--redis-name: {exc}") from None
    await stack.enter_async_context(ledger)
    try:
        await ledger.refresh()
    except ClipnormalsError as exc:
        raise SharedStateError(exc.message) from None
    return limiter, ledger


@asynccontextmanager
async def _made(
    make: Callable[[str, str | None], AsyncClient], key: str, base_url: str | None
) -> AsyncIterator[AsyncClient]:
    try:
        client = make(key, base_url)
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
    """Run a batch with Ctrl-C and SIGTERM handling: once stops gracefully, twice aborts."""
    control = BatchControl()
    try:
        async with open_client(options, control=control) as client, anyio.create_task_group() as tg:
            tg.start_soon(_watch_signals, control)
            try:
                summary = await run_batch(config, client=client, reporter=reporter, control=control)
            finally:
                tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise _first_error(group) from None
    return summary


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


async def _watch_signals(control: BatchControl) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
        async for _signum in received:
            if not control.stop_requested:
                control.stop()
            else:
                control.abort()


def dry_run_lines(report: DryRunReport, rate: RateLimit, *, verbose: bool = False) -> list[str]:
    """The dry run's report as text lines."""
    lines = ["dry run: nothing was sent and nothing was written"]
    extra = []
    if report.ignored:
        extra.append(f"{plural(report.ignored, 'other file')} ignored")
    if report.hidden:
        extra.append(f"{report.hidden} hidden")
    if report.outputs:
        extra.append(f"{plural(report.outputs, 'earlier output')} left out")
    found = f" ({', '.join(extra)})" if extra else ""
    lines.append(f"{report.total:>6} images found{found}")
    lines.append(f"{report.complete:>6} already done (would be skipped)")
    lines.append(f"{report.copies:>6} identical to another image (copied, no credit)")
    changed = ", ".join(f"{n} {kind}" for kind, n in sorted(report.changes.items()))
    lines.append(
        f"{report.to_send:>6} to upload: {plural(report.credits_needed, 'credit')}"
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
    if report.stop is not None:
        why = STOPS[report.stop].summary
        lines.append(
            f"credits: the run would send {report.sendable} of {report.to_send} uploads, then "
            f"stop ({why}): {plural(report.not_sent, 'image')} recorded not_sent, exit "
            f"{int(ExitCode.CREDITS)}"
        )
    if report.seconds is None:
        lines.append("time:    unknown")
    elif report.seconds_measured:
        lines.append(
            f"time:    about {format_duration(report.seconds)} (measured: preparation here, "
            f"the server's pace in earlier runs; quota {format_rate(rate)})"
        )
    else:
        lines.append(
            f"time:    at least {format_duration(report.seconds)} at {format_rate(rate)} "
            "(the quota's time; the server's own time comes on top)"
        )
    if verbose:
        lines.extend(f"  {action:<8} {source}" for source, action in report.plan)
    lines.append(f"a run would exit {int(report.exit_code)} ({report.exit_code.meaning})")
    return lines


async def dry_run_command(
    config: BatchConfig, options: ClientOptions, out: Console, *, verbose: bool = False
) -> ExitCode:
    """Print what a run would do; exit with the code the run would end with."""
    async with open_client(options, offline=True) as client:
        report = await dry_run(config, client=client)
    for line in dry_run_lines(report, options.rate, verbose=verbose):
        say(out, line)
    return report.exit_code


def _read_image(image: Path) -> bytes:
    try:
        with open_regular(image) as f:
            return f.read()
    except FileNotFoundError:
        raise UsageError(f"no such file: {image}") from None
    except NotRegularFileError as exc:
        raise UsageError(f"{image} is {exc.strerror}") from None
    except OSError as exc:
        raise UsageError(f"cannot read {image}: {exc.strerror or exc}") from None


def _check_targets(image: Path, targets: list[Path]) -> None:
    """Refuse outputs that would overwrite the image or each other, or cannot be written."""
    for n, target in enumerate(targets):
        require_short_name(target)
        if target.is_dir():
            raise UsageError(f"-o {target} is a folder: name the file to write")
        if target.absolute() == image.absolute() or _same_file(target, image):
            raise UsageError(f"{target} is the image itself: name another file to write")
        if any(target.absolute() == other.absolute() for other in targets[:n]):
            raise UsageError(
                f"the map and the .npz would both be {target}: name the map with another suffix"
            )
        check_output_file(target)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


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
    """One image: write its normal map (the response bytes) and optionally the ``.npz``.

    Where it writes is checked before the upload: a folder, the image itself, an ``.npz`` that
    would be the map, or a place that cannot be written is refused with nothing spent."""
    data = await anyio.to_thread.run_sync(_read_image, image)
    npz_path = output.with_suffix(".npz")
    await anyio.to_thread.run_sync(_check_targets, image, [output, *([npz_path] if npz else [])])
    async with open_client(options) as client:
        try:
            nm = await client.surface_normals(data, name=image.name)
        except ClipnormalsError as exc:
            stats = client.stats
            verdict = classify(
                exc, RunContext(client.credits, responses=sum(stats.statuses.values()))
            )
            say(out, f"{verdict.status.value}: {type(exc).__name__}: {exc.message}")
            if verdict.stop is None:
                return ExitCode.FAILED
            stop = STOPS[verdict.stop]
            say(out, stop.advice.replace("send the rest", "try again"))
            return stop.exit_code
        await anyio.to_thread.run_sync(atomic_write_bytes, output, nm.jpeg)
        written = [str(output)]
        if npz:

            def make_npz() -> bytes:
                return npz_bytes(nm.with_convention(flip_x=flip_x, flip_y=flip_y))

            npz_data = await anyio.to_thread.run_sync(make_npz)
            await anyio.to_thread.run_sync(atomic_write_bytes, npz_path, npz_data)
            written.append(str(npz_path))
        left = client.credits.remaining
        say(
            out, f"wrote {', '.join(written)}" + ("" if left is None else f" ({left} credits left)")
        )
    return ExitCode.OK
