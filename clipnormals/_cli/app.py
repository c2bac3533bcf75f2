"""The ``clipnormals`` command: ``batch``, ``normals``, ``demo`` and ``emulator``.

Needs the ``cli`` extra (typer, rich); ``demo``, ``emulator`` and ``batch --emulator`` need the
``emulator`` extra too. ``main`` is the console entry point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

try:
    import typer
    from rich.console import Console
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the installed extras
    raise SystemExit(
        f"the clipnormals command needs the 'cli' extra ({exc.name} is missing): "
        "pip install 'clipnormals[cli]'"
    ) from None

import anyio

from .._batch.manifest import ManifestLockedError
from .._batch.types import BatchConfig, ExitCode
from .._core.config import API_KEY_ENV, BASE_URL_ENV, check_base_url, resolve_base_url
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
from .emulator import emulator_command
from .output import UsageError, fail

__all__ = ["app", "main"]

EXIT_CODES = (
    "Exit codes: 0 all done (skipped ones included); 1 some images failed or were rejected; "
    "2 bad usage; 3 stopped for credits (reserve, --max-credits or 402: some images were not "
    "sent); 4 the server refused the key (401/403); 130 interrupted (Ctrl-C)."
)

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


def _finish(code: int) -> NoReturn:
    raise typer.Exit(int(code))


def _usage(message: str) -> NoReturn:
    fail(message)


@app.command(epilog=EXIT_CODES)
def batch(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="Image files, folders (searched recursively; images are recognised by their "
            "bytes) or text files listing paths, one a line.",
            metavar="INPUT...",
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
            help="Validate every input and print what would be sent, the credits needed and "
            "the time the quota implies; send nothing. Exits 1 when inputs would be rejected.",
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
            help="Images handed to the client at once (requests in flight at most). A graceful "
            "stop lets these finish.",
        ),
    ] = 8,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict", help="Refuse images over 25 MP / 30 MB instead of downscaling them."
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
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds per request attempt.")] = 60.0,
    workers: Annotated[
        int, typer.Option(min=1, help="Threads for hashing, preparing and writing.")
    ] = 2,
    plain: Annotated[
        bool | None,
        typer.Option(
            "--plain/--progress",
            help="One line per image, or a progress bar [default: a bar on a terminal].",
            show_default=False,
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="List every image.")] = False,
) -> None:
    """Turn a folder of portraits into a folder of normal maps; rerun to resume.

    Pays one credit per new image, never more: finished images are skipped (by content hash and
    a valid output), identical images are uploaded once, and an interrupted run picks up where
    it stopped. Ctrl-C once stops sending and lets requests in flight finish; twice aborts.
    """
    limit = _rate(rate, burst)
    _check_url(base_url, emulator)
    config = BatchConfig(
        inputs=tuple(str(p) for p in inputs),
        output_dir=output,
        manifest=manifest,
        npz=npz,
        previews=preview,
        contact_sheets=contact_sheets,
        strict=strict,
        flip_x=flip_x,
        flip_y=flip_y,
        workers=workers,
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
    )
    try:
        if dry_run:
            _finish(anyio.run(dry_run_command, config, limit, Console(soft_wrap=True)))
        reporter = choose_reporter(plain, verbose)
        summary = anyio.run(run_batch_command, config, options, reporter)
    except (UsageError, ManifestLockedError, FileNotFoundError) as exc:
        _usage(str(exc))
    except OSError as exc:  # the output folder cannot be written: nothing sensible to go on with
        fail(str(exc), ExitCode.FAILED)
    _finish(summary.exit_code)


@app.command(epilog=EXIT_CODES)
def normals(
    image: Annotated[
        Path, typer.Argument(help="A portrait (PNG, JPEG, WEBP, ...).", metavar="IMAGE")
    ],
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="Where to write [default: <image name>.normals.jpg]."),
    ] = None,
    npz: Annotated[bool, typer.Option("--npz", help="Also write OUTPUT with .npz.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Never downscale.")] = False,
    flip_x: Annotated[bool, typer.Option("--flip-x", help="Negate X in the .npz.")] = False,
    flip_y: Annotated[bool, typer.Option("--flip-y", help="Negate Y in the .npz.")] = False,
    api_key_env: Annotated[str, typer.Option(help=_ENV_HELP)] = API_KEY_ENV,
    base_url: Annotated[str | None, typer.Option(help=_BASE_URL_HELP, show_default=False)] = None,
    emulator: Annotated[bool, typer.Option("--emulator", help=_EMULATOR_HELP)] = False,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds per request attempt.")] = 60.0,
) -> None:
    """Normal map of one image: writes the response JPEG untouched."""
    _check_url(base_url, emulator)
    target = output if output is not None else Path(f"{image.name}.normals.jpg")
    options = ClientOptions(
        rate=RateLimit(),
        concurrency=1,
        timeout=timeout,
        strict=strict,
        api_key_env=api_key_env,
        base_url=base_url,
        emulator=emulator,
    )
    try:
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
    except UsageError as exc:
        _usage(str(exc))
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

    try:
        code = anyio.run(
            run_demo, directory, choose_reporter(plain, verbose=False), Console(soft_wrap=True)
        )
    except (UsageError, ManifestLockedError, FileExistsError, ImportError) as exc:
        _usage(str(exc))
    _finish(code)


app.command("emulator")(emulator_command)


def main() -> None:
    """Console entry point: ``clipnormals``."""
    try:
        app(prog_name="clipnormals")
    except KeyboardInterrupt:
        # Ctrl-C outside a batch's own handling (while starting up): no traceback.
        raise SystemExit(ExitCode.INTERRUPTED) from None


if __name__ == "__main__":  # pragma: no cover
    main()
