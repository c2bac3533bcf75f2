"""Finding the images a batch should process.

An input is a file, a folder (walked recursively), or a text file listing paths, one a line.
Inside a folder, a file is taken when its first bytes are those of an image format that
preparation accepts (``clipnormals._images.formats`` recognises them, HEIC and AVIF included),
whatever its name; a file whose name says "image" but whose bytes do not is taken too, so that a
corrupt ``.jpg`` is reported with a reason instead of vanishing. Everything else in a folder
(text, sidecars, hidden files) is counted as ignored.

Each image gets a key: its path relative to the input it was found through (a folder input keeps
its tree; a file input keeps its name; a path from a list keeps its path relative to the current
directory). Keys name the outputs, so two images with the same key get stable suffixes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .._images.formats import sniff

__all__ = [
    "Discovery",
    "InputFile",
    "discover",
    "file_digest",
    "hash_file",
    "looks_like_image",
    "sniff_image_format",
]

# Names that claim to be images: taken from folders even when their bytes say otherwise, so the
# preparation step can report them as corrupt rather than have them silently skipped.
IMAGE_SUFFIXES = frozenset(
    {
        ".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".gif", ".bmp", ".dib", ".tif",
        ".tiff", ".avif", ".heic", ".heif", ".jp2", ".j2k", ".ico", ".qoi", ".tga", ".ppm",
        ".pgm", ".pbm", ".pnm",
    }
)  # fmt: skip

_SNIFF_BYTES = 64  # enough for every signature, ftyp brands included
_LIST_MAX_BYTES = 64 * 1024 * 1024
_HASH_CHUNK = 1024 * 1024


def sniff_image_format(head: bytes) -> str | None:
    """The image format the first bytes of a file announce, or ``None``.

    The one sniffer of the package (``clipnormals._images.formats.sniff``): Pillow's own
    signature tests, plus HEIF/AVIF by their ``ftyp`` brands whether or not a reader is
    installed; a RIFF file that is not WEBP (WAVE, AVI) is not an image.

    Example:
        >>> sniff_image_format(b"\\x89PNG\\r\\n\\x1a\\n" + bytes(8))
        'PNG'
        >>> sniff_image_format(b"hello") is None
        True
    """
    return sniff(head)


def looks_like_image(path: str | os.PathLike[str]) -> bool:
    """True when the file's bytes announce an image, or its name claims to be one."""
    if _suffix(os.fspath(path)).lower() in IMAGE_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError:
        return False
    return sniff_image_format(head) is not None


def _suffix(path: str) -> str:
    """``PurePath.suffix`` of a path string, without building (and interning) a path object."""
    name = os.path.basename(path)
    dot = name.rfind(".")
    return name[dot:] if 0 < dot < len(name) - 1 else ""


def hash_file(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes, as hex (read in chunks; call it from a worker thread).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = Path(d, "x"); _ = p.write_bytes(b"abc"); hash_file(p)[:12]
        'ba7816bf8f01'
    """
    return file_digest(path).hex()


def file_digest(path: str | os.PathLike[str]) -> bytes:
    """The SHA-256 of a file's bytes, as the 32 raw bytes (half the size of the hex, for a
    plan that keeps one per source)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.digest()


@dataclass(frozen=True, slots=True)
class InputFile:
    """One image to process.

    Attributes:
        fspath: the absolute path of the file, as a string (a batch holds one per source, and
            a string costs a fraction of a :class:`~pathlib.Path`).
        key: its name relative to the input it was found through (POSIX separators); unique in
            a discovery, and the base of its output's name.

    Example:
        >>> InputFile("/in/a.png", "a.png").path
        PosixPath('/in/a.png')
    """

    fspath: str
    key: str

    @property
    def path(self) -> Path:
        """The absolute path of the file."""
        return Path(self.fspath)


@dataclass(frozen=True, slots=True)
class Discovery:
    """What :func:`discover` found.

    Attributes:
        files: the images, sorted by key.
        missing: ``(path, reason)`` for listed paths that could not be read.
        ignored: how many files in folders were not images.
    """

    files: tuple[InputFile, ...]
    missing: tuple[tuple[str, str], ...] = ()
    ignored: int = 0


@dataclass(slots=True)
class _Collector:
    exclude: tuple[Path, ...]
    # Absolute path strings: path objects would cost several times as much per file, and
    # their parsing interns every file name for the life of the process.
    found: dict[str, str] = field(default_factory=dict)
    missing: list[tuple[str, str]] = field(default_factory=list)
    ignored: int = 0

    def add(self, path: str | os.PathLike[str], key: str) -> None:
        # The first input that reaches a file names it: a file given twice is processed once.
        self.found.setdefault(os.fspath(path), key)

    def excluded(self, path: Path) -> bool:
        return any(path == ex or path.is_relative_to(ex) for ex in self.exclude)


def discover(
    inputs: Sequence[str | os.PathLike[str]],
    *,
    exclude: Iterable[str | os.PathLike[str]] = (),
    cwd: str | os.PathLike[str] | None = None,
) -> Discovery:
    """Expand files, folders and path lists into the images to process.

    Blocking (it walks the file system): call it from a worker thread in async code.

    Args:
        inputs: files, folders, or text files listing paths (one a line, ``#`` starts a
            comment; relative paths are taken from the current directory).
        exclude: folders to leave out, such as the output folder when it lies inside an input.
        cwd: the directory relative list entries and keys are taken from (default: the
            current directory).

    Raises:
        FileNotFoundError: an input given directly does not exist.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = Path(d, "a.png").write_bytes(b"\\x89PNG\\r\\n\\x1a\\n")
        ...     _ = Path(d, "notes.txt").write_text("hello")
        ...     found = discover([d])
        >>> [f.key for f in found.files], found.ignored
        (['a.png'], 1)
    """
    base = Path(cwd).resolve() if cwd is not None else Path.cwd()
    collector = _Collector(exclude=tuple(Path(base, e).resolve() for e in exclude))
    for raw in inputs:
        path = Path(base, raw)
        if not path.exists():
            raise FileNotFoundError(f"no such file or folder: {os.fspath(raw)}")
        _add_input(collector, path.resolve(), base=base, listed=False)
    return Discovery(
        files=_unique_keys(collector.found),
        missing=tuple(collector.missing),
        ignored=collector.ignored,
    )


def _add_input(collector: _Collector, path: Path, *, base: Path, listed: bool) -> None:
    if path.is_dir():
        _walk(collector, path)
    elif listed:
        collector.add(path, _key_from_base(path, base))
    elif _is_path_list(path):
        _read_list(collector, path, base=base)
    else:
        collector.add(path, path.name)


def _walk(collector: _Collector, root: Path) -> None:
    if collector.excluded(root):
        return
    # Symlinked folders are not followed (they can loop); symlinked files are taken.
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and not collector.excluded(here / d)
        )
        prefix = "".join(f"{part}/" for part in here.relative_to(root).parts)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            # Strings, not path objects, per file: see _Collector.found.
            path = os.path.join(dirpath, name)
            if os.path.isfile(path) and looks_like_image(path):
                collector.add(os.path.realpath(path), prefix + name)
            else:
                collector.ignored += 1


def _is_path_list(path: Path) -> bool:
    """A text file (UTF-8, no NUL) that is neither an image nor named like one."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return False
    try:
        with path.open("rb") as f:
            head = f.read(8192)
        size = path.stat().st_size
    except OSError:
        return False
    if not head or size > _LIST_MAX_BYTES or sniff_image_format(head) is not None:
        return False
    if b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut by the 8 KiB window is still text.
        return exc.start >= len(head) - 3
    return True


def _read_list(collector: _Collector, list_path: Path, *, base: Path) -> None:
    text = list_path.read_text(encoding="utf-8", errors="replace")
    for line in text.splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        path = Path(base, entry)
        if not path.exists():
            collector.missing.append((entry, f"listed in {list_path.name} but not found"))
            continue
        path = path.resolve()
        if path.is_dir():
            _walk(collector, path)
        elif path.is_file():
            collector.add(path, _key_from_base(path, base))
        else:
            collector.missing.append((entry, "not a regular file"))


def _key_from_base(path: Path, base: Path) -> str:
    if path.is_relative_to(base):
        return PurePosixPath(*path.relative_to(base).parts).as_posix()
    # Outside the current directory: keep the whole path, minus its anchor, so keys stay apart.
    return PurePosixPath(*path.parts[1:]).as_posix()


def _unique_keys(found: dict[str, str]) -> tuple[InputFile, ...]:
    # Nearly every key is unique: only keys reached by several paths get a list.
    first: dict[str, str] = {}
    shared: dict[str, list[str]] = {}
    for path, key in found.items():
        taken = first.setdefault(key, path)
        if taken is not path:
            shared.setdefault(key, [taken]).append(path)
    files: list[InputFile] = []
    for key, path in first.items():
        paths = shared.get(key)
        if paths is None:
            files.append(InputFile(path, key))
            continue
        # Component by component, as paths compare (``a/b/c`` before ``a/b-c``).
        paths.sort(key=lambda p: p.split(os.sep))
        files.append(InputFile(paths[0], key))
        for path in paths[1:]:
            # The suffix comes from the path itself, not from a counter, so it does not shift
            # when files are added or removed between runs.
            tag = hashlib.sha256(os.fsencode(path)).hexdigest()[:8]
            pure = PurePosixPath(key)
            files.append(InputFile(path, str(pure.with_name(f"{pure.stem}~{tag}{pure.suffix}"))))
    files.sort(key=lambda f: f.key)
    return tuple(files)
