"""The ``clipnormals`` command: ``batch``, ``normals``, ``demo`` and ``emulator``.

Needs the ``cli`` extra (typer, rich); ``demo``, ``emulator`` and ``batch --emulator`` need the
``emulator`` extra too. ``main`` is the console entry point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, NoReturn

try:
    import typer
    from rich.console import Console
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the installed extras
    raise SystemExit(
        f"the clipnormals command needs the 'cli' extra ({exc.name} is missing): "
        "pip install 'clipnormals[cli]'"
    ) from None

import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import anyio
from typer.core import TyperArgument, TyperCommand

from .._batch.config import BatchConfig
from .._batch.outcomes import ExitCode, exit_code_for, exit_code_help
from .._batch.shard import Shard
from .._core.config import (
    API_KEY_ENV,
    BASE_URL_ENV,
    REDIS_URL_ENV,
    check_base_url,
    resolve_base_url,
    resolve_redis_url,
)
from .._core.limiter import RateLimit
from .._errors import ClipnormalsError
from .._version import __version__
from .commands import (
    ClientOptions,
    choose_reporter,
    dry_run_command,
    normals_command,
    run_batch_command,
)
from .crash import report_internal_error
from .emulator import emulator_command
from .output import UsageError, fail, say

__all__ = ["EXIT_CODES", "app", "main"]

#: The exit codes, for the help text: made from the outcome table, never written by hand.
EXIT_CODES = exit_code_help()

#: ``normals`` sends one image and keeps no manifest: its own words for the codes it ends with.
NORMALS_EXIT_CODES = (
    "Exit codes: "
    + "; ".join(
        f"{code.value} {meaning}"
        for code, meaning in (
            (ExitCode.OK, "the normal map was written"),
            (ExitCode.FAILED, "the image was rejected or its request failed; nothing was written"),
            (
                ExitCode.USAGE,
                "bad usage: an option, an input that cannot be read, no API key, or an output "
                "that would be a folder, the image itself or the .npz; nothing was sent",
            ),
            (ExitCode.CREDITS, "the account is out of credits; nothing was written"),
            (ExitCode.AUTH, "the server refused the API key (401/403)"),
            (ExitCode.UNAVAILABLE, "the server cannot be reached (sysexits EX_UNAVAILABLE)"),
            (
                ExitCode.SOFTWARE,
                "an internal error (sysexits EX_SOFTWARE); the message says where the full "
                "traceback was written",
            ),
            (
                ExitCode.CANTCREAT,
                "the output cannot be written (sysexits EX_CANTCREAT); found before the upload, "
                "nothing was sent",
            ),
            (ExitCode.INTERRUPTED, "interrupted (Ctrl-C)"),
        )
    )
    + "."
)


class _Command(TyperCommand):
    """A command whose usage line and help name arguments plainly: ``INPUT...``, not
    ``{INPUT...}...``, and without a Python type (``<list[Path]>``) beside them."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar or (param.name or "").upper()
                more = "..." if param.nargs != 1 and not name.endswith("...") else ""
                pieces.append(name + more if param.required else f"[{name}{more}]")
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces

    def format_help(self, ctx: Any, formatter: Any) -> None:
        super().format_help(ctx, formatter)
        text = "".join(formatter.buffer)
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar or (param.name or "").upper()
                shown = name + ("..." if param.nargs != 1 else "")
                # "  INPUT <list[Path]>   help" -> "  INPUT...            help", columns kept
                pattern = re.compile(rf"(?m)^(\s+)({re.escape(name)}(?:\.\.\.)? <[^>]*>)")
                text = pattern.sub(_plain_name(shown), text)
        formatter.buffer[:] = [text]


def _plain_name(shown: str) -> Callable[[re.Match[str]], str]:
    def replace(match: re.Match[str]) -> str:
        return match.group(1) + shown.ljust(len(match.group(2)))

    return replace


app = typer.Typer(
    name="clipnormals",
    help="Surface normal maps of portraits from the Clipdrop API: quota-safe, credit-aware, "
    "resumable.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

_RATE_HELP = "The quota to stay under, REQUESTS/SECONDS (or /min)."
_BASE_URL_HELP = (
    f"API root [default: ${BASE_URL_ENV} or https://clipdrop-api.co]. The key is sent over "
    "plain http only to a loopback host (an emulator); use https for a company proxy."
)
_ENV_HELP = "Read the API key from this environment variable."
_REDIS_URL_HELP = (
    f"Share the key's quota, 429 cooldown and credits with every other run given the same "
    f"Redis server and key [default: ${REDIS_URL_ENV}; none: this run alone]. "
    "redis://[:PASSWORD@]HOST:PORT/DB, rediss://... or unix:///PATH; the password is never "
    "shown. --max-credits and --reserve then apply to all the runs together. Needs the "
    "'redis' extra."
)
_REDIS_NAME_HELP = (
    "The name the runs share in Redis [default: key- and 16 hex digits of the SHA-256 of the "
    "API key, so runs on one key share]. What is shared is kept for a day after its last use: "
    "after a top-up, give a new name."
)
_SHARD_HELP = (
    "Process only shard K of N (1 <= K <= N) of the inputs, so that N runs (machines) can "
    "share one input set and one output folder. A source's shard comes from the SHA-256 of its "
    "bytes: the same on every machine, and identical images always fall in the same shard (so "
    "each is uploaded once). Each shard writes OUTPUT/manifest.shard-K-of-N.jsonl under its "
    "own lock; see the whole job with 'clipnormals status OUTPUT'. Give every run the same N."
)
_EMULATOR_HELP = (
    "Run against a fresh emulator on a loopback port instead of the API (no key, no network; "
    "synthetic normal maps)."
)


def _version(value: bool) -> None:
    if value:
        print(f"clipnormals {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Surface normal maps of portraits from the Clipdrop API."""


def _rate(text: str, burst: int) -> RateLimit:
    try:
        return RateLimit.parse(text, burst=burst)
    except ValueError as exc:
        detail = f"{exc} ({exc.__cause__})" if exc.__cause__ else str(exc)
        raise typer.BadParameter(detail, param_hint="--rate/--burst") from None


def _check_url(base_url: str | None, emulator: bool) -> None:
    if emulator and base_url is not None:
        raise typer.BadParameter("use either --emulator or --base-url", param_hint="--emulator")
    if not emulator:
        try:
            check_base_url(resolve_base_url(base_url))
        except ClipnormalsError as exc:
            raise typer.BadParameter(exc.message, param_hint="--base-url") from None


def _shard(text: str | None) -> Shard | None:
    if text is None:
        return None
    try:
        return Shard.parse(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--shard") from None


def _redis_url(url: str | None) -> str | None:
    try:
        return resolve_redis_url(url)
    except ClipnormalsError as exc:
        raise typer.BadParameter(exc.message, param_hint="--redis-url") from None


def _finish(code: int) -> NoReturn:
    raise typer.Exit(int(code))


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """Errors that end a command become one line and their documented exit code."""
    try:
        yield
    except UsageError as exc:
        fail(str(exc))
    except ClipnormalsError as exc:
        code = exit_code_for(exc)
        if code is None:
            raise  # not an error a run ends with: a bug (see main)
        fail(exc.message, code)


@app.command(cls=_Command, epilog=EXIT_CODES)
def batch(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="Image files, folders (searched recursively; images are recognised by their "
            "bytes) or text files listing paths, one a line.",
            metavar="INPUT",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "-o",
            "--output",
            help="Output folder: <path>.normals.jpg for each image.",
            show_default=False,
        ),
    ],
    manifest: Annotated[
        Path | None, typer.Option(help="JSONL manifest [default: OUTPUT/manifest.jsonl].")
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Validate every input and print what would be sent, what it would cost, how "
            "long it would take and what the credit limits would do; send nothing, write "
            "nothing. Exits with the code the run would end with.",
        ),
    ] = False,
    npz: Annotated[
        bool, typer.Option("--npz", help="Also write <path>.normals.npz (normals, mask).")
    ] = False,
    preview: Annotated[
        bool, typer.Option("--preview", help="Also write <path>.preview.jpg for each image.")
    ] = False,
    contact_sheets: Annotated[
        bool,
        typer.Option("--contact-sheets", help="Also write OUTPUT/contact-sheets/sheet-NNN.jpg."),
    ] = False,
    max_credits: Annotated[
        int | None, typer.Option(min=0, help="Spend at most this many credits in this run.")
    ] = None,
    reserve: Annotated[
        int, typer.Option(min=0, help="Credits to leave untouched on the account.")
    ] = 0,
    rate: Annotated[str, typer.Option(help=_RATE_HELP)] = "60/60",
    burst: Annotated[
        int, typer.Option(min=1, help="Requests that may start back to back (within the quota).")
    ] = 1,
    concurrency: Annotated[
        int,
        typer.Option(
            min=1,
            help="Requests in flight at most (the client's max_concurrency): also the most "
            "credits a kill -9 can lose. A graceful stop lets these finish.",
        ),
    ] = 8,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Refuse images over 25,000,000 pixels / 30,000,000 bytes instead of "
            "downscaling or re-encoding them.",
        ),
    ] = False,
    flip_x: Annotated[
        bool, typer.Option("--flip-x", help="Negate X in .npz and previews.")
    ] = False,
    flip_y: Annotated[
        bool, typer.Option("--flip-y", help="Negate Y in .npz and previews.")
    ] = False,
    api_key_env: Annotated[str, typer.Option(help=_ENV_HELP)] = API_KEY_ENV,
    base_url: Annotated[str | None, typer.Option(help=_BASE_URL_HELP, show_default=False)] = None,
    emulator: Annotated[bool, typer.Option("--emulator", help=_EMULATOR_HELP)] = False,
    emulator_credits: Annotated[
        int, typer.Option(min=0, help="Credits of the --emulator key.")
    ] = 1000,
    shard: Annotated[
        str | None, typer.Option(metavar="K/N", help=_SHARD_HELP, show_default=False)
    ] = None,
    redis_url: Annotated[
        str | None,
        typer.Option(metavar="URL", help=_REDIS_URL_HELP, show_default=False),
    ] = None,
    redis_name: Annotated[
        str | None, typer.Option(metavar="NAME", help=_REDIS_NAME_HELP, show_default=False)
    ] = None,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds per request attempt.")] = 60.0,
    threads: Annotated[
        int, typer.Option(min=1, help="Threads for hashing sources and writing outputs.")
    ] = 2,
    workers: Annotated[int | None, typer.Option(min=1, hidden=True)] = None,
    plain: Annotated[
        bool | None,
        typer.Option(
            "--plain/--progress",
            help="One line per image, or a progress bar [default: a bar on a terminal].",
            show_default=False,
        ),
    ] = None,
    verbose: Annotated[
        bool,
        typer.Option("-v", "--verbose", help="List every image (and, with --dry-run, its plan)."),
    ] = False,
) -> None:
    """Turn a folder of portraits into a folder of normal maps; rerun to resume.

    Pays one credit per new image, never more: finished images are skipped (by content hash and
    a valid output), identical images are uploaded once, and an interrupted run picks up where
    it stopped. Ctrl-C once stops sending and lets requests in flight finish; twice aborts.
    """
    limit = _rate(rate, burst)
    _check_url(base_url, emulator)
    part = _shard(shard)
    if part is not None and contact_sheets:
        raise typer.BadParameter(
            "contact sheets need the whole job: draw them from one run without --shard",
            param_hint="--contact-sheets",
        )
    shared_url = _redis_url(redis_url)
    if workers is not None:
        say(sys.stderr, "warning: --workers is deprecated: use --threads (the same thing)")
        threads = workers
    config = BatchConfig(
        inputs=tuple(str(p) for p in inputs),
        output_dir=output,
        manifest=manifest,
        npz=npz,
        previews=preview,
        contact_sheets=contact_sheets,
        flip_x=flip_x,
        flip_y=flip_y,
        threads=threads,
        shard=part,
    )
    options = ClientOptions(
        rate=limit,
        concurrency=concurrency,
        max_credits=max_credits,
        reserve=reserve,
        timeout=timeout,
        strict=strict,
        api_key_env=api_key_env,
        base_url=base_url,
        emulator=emulator,
        emulator_credits=emulator_credits,
        redis_url=shared_url,
        redis_name=redis_name,
    )
    with _one_line_errors():
        if dry_run:
            out = Console(soft_wrap=True)
            _finish(anyio.run(lambda: dry_run_command(config, options, out, verbose=verbose)))
        reporter = choose_reporter(plain, verbose)
        summary = anyio.run(run_batch_command, config, options, reporter)
    _finish(summary.exit_code)


@app.command(cls=_Command, epilog=NORMALS_EXIT_CODES)
def normals(
    image: Annotated[
        Path, typer.Argument(help="A portrait (PNG, JPEG, WEBP, ...).", metavar="IMAGE")
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "-o", "--output", help="Where to write [default: IMAGE.normals.jpg, next to IMAGE]."
        ),
    ] = None,
    npz: Annotated[bool, typer.Option("--npz", help="Also write OUTPUT with .npz.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Never downscale.")] = False,
    flip_x: Annotated[bool, typer.Option("--flip-x", help="Negate X in the .npz.")] = False,
    flip_y: Annotated[bool, typer.Option("--flip-y", help="Negate Y in the .npz.")] = False,
    api_key_env: Annotated[str, typer.Option(help=_ENV_HELP)] = API_KEY_ENV,
    base_url: Annotated[str | None, typer.Option(help=_BASE_URL_HELP, show_default=False)] = None,
    emulator: Annotated[bool, typer.Option("--emulator", help=_EMULATOR_HELP)] = False,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds per request attempt.")] = 60.0,
    rate: Annotated[str, typer.Option(help=_RATE_HELP)] = "60/60",
    redis_url: Annotated[
        str | None,
        typer.Option(metavar="URL", help=_REDIS_URL_HELP, show_default=False),
    ] = None,
    redis_name: Annotated[
        str | None, typer.Option(metavar="NAME", help=_REDIS_NAME_HELP, show_default=False)
    ] = None,
) -> None:
    """Normal map of one image: writes the response JPEG untouched."""
    limit = _rate(rate, 1)
    _check_url(base_url, emulator)
    shared_url = _redis_url(redis_url)
    target = output if output is not None else image.with_name(f"{image.name}.normals.jpg")
    options = ClientOptions(
        rate=limit,
        concurrency=1,
        timeout=timeout,
        strict=strict,
        api_key_env=api_key_env,
        base_url=base_url,
        emulator=emulator,
        redis_url=shared_url,
        redis_name=redis_name,
    )
    with _one_line_errors():
        code = anyio.run(
            lambda: normals_command(
                image,
                target,
                options,
                flip_x=flip_x,
                flip_y=flip_y,
                npz=npz,
                out=Console(soft_wrap=True),
            )
        )
    _finish(code)


@app.command()
def demo(
    directory: Annotated[
        Path, typer.Option("--dir", help="Where to write the demo's files.")
    ] = Path("clipnormals-demo"),
    plain: Annotated[
        bool | None,
        typer.Option(
            "--plain/--progress", help="One line per image, or a progress bar.", show_default=False
        ),
    ] = None,
) -> None:
    """The whole batch path against the built-in emulator: no key, no network, under a minute.

    Processes the bundled sample portraits (and a few variants made from them) and writes
    normal maps, contact sheets and the manifest into ./clipnormals-demo/.
    """
    from .demo import run_demo

    with _one_line_errors():
        try:
            code = anyio.run(
                run_demo, directory, choose_reporter(plain, verbose=False), Console(soft_wrap=True)
            )
        except (FileExistsError, ImportError) as exc:
            fail(str(exc))
    _finish(code)


@app.command(cls=_Command)
def status(
    output: Annotated[
        Path,
        typer.Argument(help="The output folder of a batch job.", metavar="OUTPUT"),
    ],
) -> None:
    """The state of a whole batch job: every manifest in OUTPUT, its shards' included.

    Prints each manifest's counts (the latest record of each image), then the job's: images
    done, not sent, failed and rejected, the credits their outputs cost, and the shards that
    have not reported yet. Safe while the shards run (no lock is taken; each file is read as
    it stands). Exits 0 when the job is complete, 1 when images are left or a shard has not
    reported, 2 when OUTPUT holds no manifest.
    """
    from .status import status_lines

    with _one_line_errors():
        try:
            lines, complete = status_lines(output)
        except FileNotFoundError as exc:
            fail(str(exc))
    out = Console(soft_wrap=True)
    for line in lines:
        say(out, line)
    _finish(ExitCode.OK if complete else ExitCode.FAILED)


app.command("emulator")(emulator_command)


def main() -> None:
    """Console entry point: ``clipnormals``."""
    try:
        app(prog_name="clipnormals")
    except KeyboardInterrupt:
        # Ctrl-C outside a batch's own handling (while starting up): no traceback.
        raise SystemExit(ExitCode.INTERRUPTED) from None
    except Exception as exc:  # a bug: one line, the traceback in a file
        report_internal_error(exc)


if __name__ == "__main__":  # pragma: no cover
    main()
