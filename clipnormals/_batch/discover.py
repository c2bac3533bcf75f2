"""Finding the images a batch should process.

An input is a file, a folder (walked recursively), or a text file listing paths, one a line
(UTF-8, with or without a byte order mark, any line ends).
Inside a folder, a regular file is taken when its first bytes are those of an image format that
preparation accepts (``clipnormals._images.formats`` recognises them, HEIC and AVIF included),
whatever its name; a file whose name says "image" but whose bytes do not is taken too, so that a
corrupt ``.jpg`` is reported with a reason instead of vanishing. Other files are counted as
ignored, hidden ones (a name starting with ``.``, folders included) as hidden.

Nothing that is not a regular file is ever opened: a FIFO would block the run forever, a device
could be endless. Inside a folder, broken links, link loops, FIFOs, sockets, devices and
folders named like an image (``photos.jpg/``) are reported as invalid with the reason; links to
folders are not followed (they can loop) and are counted as ignored. An input given directly
that is missing, a broken link, a loop or not a file or folder raises
:class:`BatchInputError` before anything is sent.

Each image gets a key: its path relative to the input it was found through (a folder input keeps
its tree; a file input keeps its name; a path from a list keeps its path relative to the current
directory). Keys name the outputs, so two images with the same key get stable suffixes.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, cast

from .._images.formats import sniff
from .errors import BatchInputError

__all__ = [
    "OUTPUT_SUFFIX",
    "PREVIEW_SUFFIX",
    "Discovery",
    "InputFile",
    "NotRegularFileError",
    "RegularFile",
    "discover",
    "file_digest",
    "hash_file",
    "is_output_name",
    "looks_like_image",
    "open_regular",
    "read_regular",
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

#: What this package adds to an image's name for its normal map (the batch's outputs, and the
#: ``normals`` command's default next to the image).
OUTPUT_SUFFIX = ".normals.jpg"
PREVIEW_SUFFIX = ".preview.jpg"  # a batch's preview of a source's results
_OUTPUT_SUFFIXES = (OUTPUT_SUFFIX, PREVIEW_SUFFIX)
SHEETS_DIR = "contact-sheets"  # where a batch draws its contact sheets
_SHEET_NAME = re.compile(r"sheet-\d{3,}\.jpg")
_SNIFF_BYTES = 64  # enough for every signature, ftyp brands included
_LIST_MAX_BYTES = 64 * 1024 * 1024

_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a folder"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


class NotRegularFileError(OSError):
    """A path that had to be a regular file is something else (a FIFO, a device, a folder)."""


def open_regular(path: str | os.PathLike[str]) -> io.BufferedReader:
    """Open a regular file for reading; raise :class:`NotRegularFileError` for anything else.

    The file is opened without blocking, so a FIFO or a device is refused instead of hanging
    the process until a writer appears; the type is checked on the open descriptor, so a file
    swapped for a FIFO after a check is refused too.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     fifo = Path(d, "fifo"); os.mkfifo(fifo)
        ...     open_regular(fifo)
        Traceback (most recent call last):
        ...
        clipnormals._batch.discover.NotRegularFileError: [Errno 22] a FIFO, not a regular file
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(errno.EINVAL, f"{_kind(mode)}, not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike[str]) -> bytes:
    """The whole content of a regular file; :class:`NotRegularFileError` for anything else.

    What :func:`open_regular` then ``read()`` would give, in about half the system calls
    (open, fstat, read until the end, close; no buffered file object), which counts when
    thousands of small files are read from worker threads.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = Path(d, "x"); _ = p.write_bytes(b"abc"); read_regular(p)
        b'abc'
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFileError(errno.EINVAL, f"{_kind(info.st_mode)}, not a regular file")
        # O_NONBLOCK has no effect on a regular file's reads.
        chunks = [os.read(fd, info.st_size + 1)]
        while chunks[-1]:
            chunks.append(os.read(fd, max(info.st_size, 1 << 16)))
        return b"".join(chunks) if len(chunks) > 2 else chunks[0]
    finally:
        os.close(fd)


class RegularFile:
    """A source file that :func:`read_regular` reads when asked: a binary file object to hand
    to :meth:`AsyncClient.prepare`, so that the reading happens in the thread that prepares.

    Attributes:
        name: the path; error: the ``OSError`` reading raised, if any (the caller may report
            it as such, whatever the preparation wraps it in).

    Example:
        >>> RegularFile("/no/such/file").read()
        Traceback (most recent call last):
        ...
        FileNotFoundError: [Errno 2] No such file or directory: '/no/such/file'
    """

    __slots__ = ("error", "name")

    def __init__(self, path: str) -> None:
        self.name = path
        self.error: OSError | None = None

    def read(self) -> bytes:
        """The file's bytes (:func:`read_regular`); the error is kept before it is raised."""
        try:
            return read_regular(self.name)
        except OSError as exc:
            self.error = exc
            raise

    def as_source(self) -> BinaryIO:
        """This object typed as the binary file the client takes (it reads any object with
        a ``read()`` method and a ``name``)."""
        return cast("BinaryIO", self)


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


def is_output_name(name: str, folder: str = "") -> bool:
    """Whether a file name (in a folder of that name) is one this package gives its outputs:
    ``<name>.normals.jpg`` (a normal map, from the batch or the ``normals`` command),
    ``<name>.preview.jpg`` (a batch's preview), ``contact-sheets/sheet-NNN.jpg``.

    Example:
        >>> is_output_name("me.png.normals.jpg"), is_output_name("me.png")
        (True, False)
        >>> is_output_name("sheet-001.jpg", "contact-sheets"), is_output_name("sheet-001.jpg")
        (True, False)
    """
    lower = name.lower()
    if any(len(lower) > len(suffix) and lower.endswith(suffix) for suffix in _OUTPUT_SUFFIXES):
        return True
    return folder == SHEETS_DIR and _SHEET_NAME.fullmatch(name) is not None


def _named_like_image(name: str) -> bool:
    return _suffix(name).lower() in IMAGE_SUFFIXES


def looks_like_image(path: str | os.PathLike[str]) -> bool:
    """True when the (regular) file's bytes announce an image, or its name claims to be one."""
    if _named_like_image(os.fspath(path)):
        return True
    try:
        with open_regular(path) as f:
            head = f.read(_SNIFF_BYTES)
    except OSError:
        return False
    return sniff_image_format(head) is not None


def _suffix(path: str) -> str:
    """``PurePath.suffix`` of a path string, without building (and interning) a path object."""
    name = os.path.basename(path.rstrip("/"))
    dot = name.rfind(".")
    return name[dot:] if 0 < dot < len(name) - 1 else ""


def hash_file(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a regular file's bytes, as hex (call it from a worker thread).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = Path(d, "x"); _ = p.write_bytes(b"abc"); hash_file(p)[:12]
        'ba7816bf8f01'
    """
    return file_digest(path).hex()


def file_digest(path: str | os.PathLike[str]) -> bytes:
    """The SHA-256 of a regular file's bytes, as the 32 raw bytes (half the size of the hex,
    for a plan that keeps one per source). Raises OSError, :class:`NotRegularFileError`
    included."""
    with open_regular(path) as f:
        return hashlib.file_digest(f, "sha256").digest()


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
        invalid: ``(key, path, reason)`` for what cannot be an image: listed paths that do not
            exist, broken links, link loops, FIFOs, devices, folders named like an image.
        ignored: files in folders that are not images, and links to folders.
        hidden: hidden files and folders left out of the search.
        outputs: files in folders named as this package names its outputs (see
            :func:`is_output_name`), left out of the search: sending a normal map, a preview or
            a contact sheet for a portrait would spend a credit on it. Named directly, such a
            file is an input like any other.
    """

    files: tuple[InputFile, ...]
    invalid: tuple[tuple[str, str, str], ...] = ()
    ignored: int = 0
    hidden: int = 0
    outputs: int = 0


@dataclass(slots=True)
class _Collector:
    exclude: tuple[Path, ...]
    # Absolute path strings: path objects would cost several times as much per file, and
    # their parsing interns every file name for the life of the process.
    found: dict[str, str] = field(default_factory=dict)
    invalid: list[tuple[str, str, str]] = field(default_factory=list)
    ignored: int = 0
    hidden: int = 0
    outputs: set[str] = field(default_factory=set)  # real paths left out as earlier outputs

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
        BatchInputError: an input given directly is missing, a broken link, a link loop, not
            a file or a folder, or cannot be read.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = Path(d, "a.png").write_bytes(b"\\x89PNG\\r\\n\\x1a\\n")
        ...     _ = Path(d, "notes.txt").write_text("hello")
        ...     _ = Path(d, ".hidden.png").write_text("hello")
        ...     found = discover([d])
        >>> [f.key for f in found.files], found.ignored, found.hidden
        (['a.png'], 1, 1)
    """
    base = Path(cwd).resolve() if cwd is not None else Path.cwd()
    collector = _Collector(exclude=tuple(Path(base, e).resolve() for e in exclude))
    for raw in inputs:
        path = Path(base, raw)
        mode = _check_input(path, os.fspath(raw))
        if stat.S_ISDIR(mode) and collector.excluded(path.resolve()):
            # Left out as a whole (it is the output folder, or inside it): nothing would be
            # found, and "every image done" would be a lie.
            raise BatchInputError(
                f"{os.fspath(raw)} is the output folder or inside it: its files would be taken "
                "for outputs; give an output folder of its own (-o)"
            )
        _add_input(collector, path.resolve(), mode, base=base, given=os.fspath(raw))
    return Discovery(
        files=_unique_keys(collector.found),
        invalid=tuple(collector.invalid),
        ignored=collector.ignored,
        hidden=collector.hidden,
        # one named directly (or through a list) as well is an input, not left out
        outputs=len(collector.outputs - collector.found.keys()),
    )


def _check_input(path: Path, shown: str) -> int:
    """The mode of an input given directly; raise BatchInputError when it cannot be one."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            raise BatchInputError(
                f"{shown} is a broken symbolic link (to {os.readlink(path)})"
            ) from None
        raise BatchInputError(f"no such file or folder: {shown}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BatchInputError(f"{shown} is a symbolic link loop") from None
        raise BatchInputError(f"cannot use {shown}: {exc.strerror or exc}") from None
    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
        raise BatchInputError(f"{shown} is {_kind(mode)}, not a file or a folder")
    return mode


def _add_input(collector: _Collector, path: Path, mode: int, *, base: Path, given: str) -> None:
    if stat.S_ISDIR(mode):
        try:
            os.listdir(path)
        except OSError as exc:
            raise BatchInputError(f"cannot read the folder {given}: {exc.strerror}") from None
        _walk(collector, path)
    elif _is_path_list(path):
        _read_list(collector, path, base=base)
    else:
        collector.add(path, path.name)


def _walk(collector: _Collector, root: Path) -> None:
    if collector.excluded(root):
        return
    pending = [(os.fspath(root), "")]
    while pending:
        folder, prefix = pending.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            collector.invalid.append(
                (prefix.rstrip("/") or ".", folder, f"cannot read the folder: {exc.strerror}")
            )
            continue
        subfolders = []
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                collector.hidden += 1
                continue
            key = prefix + name
            reason = _classify_entry(collector, entry)
            if reason == "folder":
                if not collector.excluded(Path(entry.path)):
                    subfolders.append((entry.path, key + "/"))
            elif reason == "file":
                if is_output_name(name, os.path.basename(folder)):
                    collector.outputs.add(os.path.realpath(entry.path))
                elif looks_like_image(entry.path):
                    collector.add(os.path.realpath(entry.path), key)
                else:
                    collector.ignored += 1
            elif reason == "ignored":
                collector.ignored += 1
            else:
                collector.invalid.append((key, entry.path, reason))
        # Depth first, in name order (the stack pops the last pushed first).
        pending.extend(reversed(subfolders))


def _classify_entry(collector: _Collector, entry: os.DirEntry[str]) -> str:
    """``"file"``, ``"folder"``, ``"ignored"``, or the reason the entry is invalid."""
    named_like_image = _named_like_image(entry.name)
    try:
        if entry.is_symlink():
            try:
                mode = os.stat(entry.path).st_mode
            except FileNotFoundError:
                return f"a broken symbolic link (to {os.readlink(entry.path)})"
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    return "a symbolic link loop"
                return f"cannot follow the link: {exc.strerror}"
            if stat.S_ISDIR(mode):
                if named_like_image:
                    return "a link to a folder, though named like an image"
                return "ignored"  # links to folders are not followed: they can loop
        else:
            mode = entry.stat(follow_symlinks=False).st_mode
    except OSError as exc:
        return f"cannot read it: {exc.strerror}"
    if stat.S_ISDIR(mode):
        if named_like_image:
            return "a folder, though named like an image (not searched: rename it)"
        return "folder"
    if stat.S_ISREG(mode):
        return "file"
    return f"{_kind(mode)}, not a regular file"


def _is_path_list(path: Path) -> bool:
    """A regular text file (UTF-8, no NUL) that is neither an image nor named like one."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return False
    try:
        with open_regular(path) as f:
            head = f.read(8192)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return False
    if not head or size > _LIST_MAX_BYTES or sniff_image_format(head) is not None:
        return False
    if b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start >= len(head) - 3:
            return True  # a multi-byte character cut by the 8 KiB window is still text
        # File names are bytes: a list may name a file whose name is not UTF-8. Lines of text
        # with a few such bytes are a list; binary data has them, and control bytes, all over.
        text = head.decode("utf-8", errors="surrogateescape")
        odd = sum(1 for c in text if "\udc80" <= c <= "\udcff")
        control = sum(1 for c in text if c < " " and c not in "\t\r\n")
        return control == 0 and odd * 5 <= len(text)
    return True


def _read_list(collector: _Collector, list_path: Path, *, base: Path) -> None:
    with open_regular(list_path) as f:
        # "utf-8-sig": a byte order mark (Notepad writes one) is not part of the first path;
        # a name that is not UTF-8 keeps its bytes (as os.fsdecode does), so it is found.
        text = f.read().decode("utf-8-sig", errors="surrogateescape")
    for line in text.splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        path = Path(base, entry)
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            reason = "a broken symbolic link" if os.path.islink(path) else "not found"
            collector.invalid.append((entry, entry, f"listed in {list_path.name} but {reason}"))
            continue
        except OSError as exc:
            why = "a symbolic link loop" if exc.errno == errno.ELOOP else exc.strerror
            collector.invalid.append((entry, entry, f"listed in {list_path.name}: {why}"))
            continue
        path = path.resolve()
        if stat.S_ISDIR(mode):
            _walk(collector, path)
        elif stat.S_ISREG(mode):
            collector.add(path, _key_from_base(path, base))
        else:
            collector.invalid.append((entry, entry, f"{_kind(mode)}, not a regular file"))


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
