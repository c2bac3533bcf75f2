"""The batch manifest: one JSON record per line, appended as each image is settled.

Each record describes one source image: its key (path relative to the input it was found
through), its absolute path, the SHA-256 of its bytes, the output written (relative to the output
folder) with the output's own size and SHA-256, the geometry of the upload (so that later runs
can map the normal map back to the source without preparing the source again), a status,
attempts, credits, the error, and a timestamp. The latest record of a source wins.

A record is appended (and flushed to the disk) only after the output it names is durably in
place, so a record marked ``done`` can be trusted once its output still matches. Records are
committed in groups (:meth:`ManifestWriter.commit`): the folders of a group's outputs are flushed,
then its records are appended in one write and the manifest is flushed once. A process killed
while appending leaves a torn last line; the reader ignores it and the writer cuts it off before
appending again. A run appends only records that change something (an image done, failed,
rejected, not sent, or adopted); an image found done is not recorded again, so a rerun that has
nothing to do leaves the file as it was. When superseded or torn lines are present, the writer
compacts the file to the latest record per source at the start of a run.

A lock file next to the manifest keeps two runs from writing the same manifest at once. A run
whose manifest is elsewhere (``--manifest``) also takes the lock of its output folder's own
manifest, so that two runs never write into one output folder at once, whatever their manifests.

When an append fails (a full disk, a file made read-only), the file is cut back to its length
before the append, so it still holds whole records only, and :class:`ManifestWriteError` is
raised. The outputs those records named stay in the output folder, where the next run adopts
them.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

from .._atomic import atomic_write_bytes, fsync_dir
from .._errors import ClipnormalsError
from .._images.prepare import PreparedImage
from .config import MANIFEST_NAME

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory lock
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "Geometry",
    "ManifestLockedError",
    "ManifestRecord",
    "ManifestState",
    "ManifestWriteError",
    "ManifestWriter",
    "RecordStatus",
    "lock_held",
    "read_manifest",
    "utc_now",
]


class RecordStatus(StrEnum):
    """What became of a source image in a batch."""

    DONE = "done"  # output written in this run (sent, or copied from an identical image)
    SKIPPED = "skipped"  # output already written by an earlier run and still intact
    FAILED = "failed"  # sent (or tried) and failed: server error, retries exhausted, 4xx
    NOT_SENT = "not_sent"  # never sent: credits, budget, interruption, client halted
    INVALID = "invalid"  # rejected before upload: unreadable, not an image, too large


COMPLETE = frozenset({RecordStatus.DONE, RecordStatus.SKIPPED})


class ManifestLockedError(ClipnormalsError):
    """Another run is writing this manifest."""


class ManifestWriteError(ClipnormalsError, OSError):
    """The manifest cannot be written: a full disk (``ENOSPC``), a read-only file or file
    system. The file holds the records appended before, whole; an ``OSError`` too."""

    def __init__(self, path: Path, error: OSError) -> None:
        super().__init__(f"cannot write the manifest {path}: {error.strerror or error}")
        self.errno = error.errno
        self.strerror = error.strerror


@dataclass(frozen=True, slots=True)
class Geometry:
    """How an upload relates to its source: what mapping a normal map back needs.

    Attributes:
        size: (width, height) of the uploaded image, in pixels: the normal map's size.
        display_size: (width, height) of the source as a viewer sees it (after EXIF
            orientation, before any downscale).
        orientation: the EXIF orientation (1..8) applied before upload; 1 means none.

    Example:
        >>> Geometry.from_json({"size": [4, 3], "display_size": [8, 6], "orientation": 1}).scale
        0.5
    """

    size: tuple[int, int]
    display_size: tuple[int, int]
    orientation: int = 1

    @property
    def scale(self) -> float:
        """Uploaded width over displayed width: 1.0 unless the upload was downscaled."""
        return self.size[0] / self.display_size[0]

    @classmethod
    def of(cls, prepared: PreparedImage) -> Geometry:
        """The geometry of a prepared upload."""
        return cls(prepared.size, prepared.display_size, int(prepared.orientation))

    def to_json(self) -> dict[str, Any]:
        """As JSON-ready data."""
        return {
            "size": list(self.size),
            "display_size": list(self.display_size),
            "orientation": self.orientation,
        }

    @classmethod
    def from_json(cls, data: Any) -> Geometry:
        """Parse :meth:`to_json`'s shape; raise ValueError on anything else."""
        try:
            w, h = (int(v) for v in data["size"])
            dw, dh = (int(v) for v in data["display_size"])
            orientation = int(data.get("orientation", 1))
        except (KeyError, TypeError, ValueError, OverflowError, AttributeError) as exc:
            raise ValueError(f"not a geometry: {exc}") from None
        if min(w, h, dw, dh) < 1 or not 1 <= orientation <= 8:
            raise ValueError("not a geometry: sizes must be positive, orientation 1..8")
        return cls((w, h), (dw, dh), orientation)

    def as_prepared(self, *, sha256: str = "", name: str | None = None) -> PreparedImage:
        """A :class:`PreparedImage` that carries this geometry and no bytes: enough for a
        :class:`NormalMap` to map itself back to the source, not for an upload."""
        return PreparedImage(
            data=b"",
            format="",
            content_type="",
            filename="",
            size=self.size,
            display_size=self.display_size,
            orientation=self.orientation,
            source_sha256=sha256,
            source_name=name,
            changes=(),
        )


def plain_text(value: object) -> bool:
    """Whether ``value`` is a string that can be written back as UTF-8 (no lone surrogates,
    which JSON's ``\\udXXX`` escapes can carry)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _of_type(value: object, annotation: str) -> bool:
    """Whether a parsed JSON value fits a field annotated ``str``, ``int``, ``float`` or a
    union of them with ``None`` (as ``ManifestRecord``'s fields are)."""
    for kind in annotation.split("|"):
        kind = kind.strip()
        if (
            (kind == "None" and value is None)
            or (kind == "str" and plain_text(value))
            or (kind == "int" and type(value) is int)
            or (kind == "float" and type(value) in (int, float) and math.isfinite(value))  # type: ignore[arg-type]
        ):
            return True
    return False


def utc_now() -> str:
    """The current time as an ISO 8601 UTC timestamp with millisecond precision."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True, kw_only=True)
class ManifestRecord:
    """One line of the manifest.

    Attributes:
        source: the source's key (its path relative to the input it was found through).
        path: the source's absolute path.
        sha256: SHA-256 of the source's bytes (``None`` when it could not be read).
        status: what became of it in the run that wrote the record.
        output: the normal map's path relative to the output folder.
        output_sha256, output_size: the output's own hash and size, to check it on resume.
        geometry: the upload's :class:`Geometry` (``None`` when nothing was uploaded).
        attempts: HTTP attempts made for it (0 when nothing was sent for it).
        credits: credits its output cost (kept on ``skipped`` records; 0 for a copy).
        credits_remaining: the balance the response reported.
        error_type, error: why it failed, was not sent, or was rejected.
        duplicate_of: the source whose output it copied (same content, one upload).
        seconds: for an upload, the seconds from handing it to the client to its answer
            (preparation, waits for the quota, retries and the server's time included).
        done_at: when its output was produced; time: when the record was written.

    Example:
        >>> r = ManifestRecord(
        ...     source="a.png", path="/in/a.png", sha256="ab", status=RecordStatus.DONE
        ... )
        >>> ManifestRecord.from_json(r.to_json()) == r
        True
    """

    source: str
    path: str
    sha256: str | None
    status: RecordStatus
    output: str | None = None
    output_sha256: str | None = None
    output_size: int | None = None
    geometry: Geometry | None = None
    attempts: int = 0
    credits: int = 0
    credits_remaining: int | None = None
    error_type: str | None = None
    error: str | None = None
    duplicate_of: str | None = None
    seconds: float | None = None
    done_at: str | None = None
    time: str = ""

    def to_json(self) -> str:
        """The record as one line of JSON (no newline)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["status"] = self.status.value
        data["geometry"] = None if self.geometry is None else self.geometry.to_json()
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> ManifestRecord:
        """Parse one line; raise ValueError when it is not a record."""
        try:
            data = json.loads(line)
        except RecursionError:  # brackets nested deeper than the parser goes
            raise ValueError("not a manifest record: nested too deeply") from None
        if not isinstance(data, dict):
            raise ValueError("a manifest line must be a JSON object")
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ManifestRecord:
        """Build a record from parsed JSON, ignoring unknown fields (newer versions)."""
        known = _FIELD_TYPES
        values = {k: v for k, v in data.items() if k in known}
        try:
            values["status"] = RecordStatus(values["status"])
            if values.get("geometry") is not None:
                values["geometry"] = Geometry.from_json(values["geometry"])
            for name, value in values.items():
                if name not in ("status", "geometry") and not _of_type(value, known[name]):
                    raise TypeError(f"{name} holds {type(value).__name__}, not {known[name]}")
            return cls(**values)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a manifest record: {exc}") from None


#: Each field of a record and its annotation, read by ``from_dict`` to check parsed values.
_FIELD_TYPES = {f.name: str(f.type) for f in fields(ManifestRecord)}


@dataclass(frozen=True, slots=True)
class ManifestState:
    """What a manifest says: the latest record of each source.

    Attributes:
        records: the latest record per source key, in the order they were last written.
        lines: how many records the file holds (superseded ones included).
        bad_lines: lines that could not be parsed (a torn last line included).
        torn: the file ends in a partial line (a run was killed while appending).
    """

    records: dict[str, ManifestRecord]
    lines: int = 0
    bad_lines: int = 0
    torn: bool = False

    def last_balance(self) -> tuple[int, str] | None:
        """The most recent credit balance a response reported, and when, if any."""
        best: tuple[int, str] | None = None
        for record in self.records.values():
            when = record.done_at or record.time
            if record.credits_remaining is not None and (best is None or when > best[1]):
                best = (record.credits_remaining, when)
        return best

    @property
    def needs_compaction(self) -> bool:
        """Superseded, unreadable or torn lines are present."""
        return self.torn or self.bad_lines > 0 or self.lines > len(self.records)


def read_manifest(path: Path) -> ManifestState:
    """Read a manifest, tolerating a torn last line and skipping unreadable ones.

    A missing file reads as an empty manifest. Blocking: call it from a worker thread.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = Path(d, "m.jsonl")
        ...     _ = p.write_text('{"source":"a","path":"/a","sha256":null,"status":"done"}\\n{"sou')
        ...     state = read_manifest(p)
        >>> list(state.records), state.torn
        (['a'], True)
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return ManifestState(records={})
    records: dict[str, ManifestRecord] = {}
    lines = bad = 0
    torn = False
    chunks = raw.split(b"\n")
    last = len(chunks) - 1
    for i, chunk in enumerate(chunks):
        if not chunk.strip():
            continue
        try:
            record = ManifestRecord.from_json(chunk.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            if i == last:
                torn = True  # killed while appending: the record never made it
            else:
                bad += 1
            continue
        lines += 1
        # Re-inserting moves the source to the end: the dict keeps "last written" order.
        records.pop(record.source, None)
        records[record.source] = record
    return ManifestState(records=records, lines=lines, bad_lines=bad, torn=torn)


@dataclass(slots=True, eq=False)
class _Ticket:
    """Records waiting for a commit, and what became of them."""

    records: Sequence[ManifestRecord]
    folders: Sequence[Path]
    done: bool = False
    error: BaseException | None = field(default=None)


def _lock_path(manifest: Path) -> Path:
    return manifest.with_name(f".{manifest.name}.lock")


def lock_held(manifest: Path) -> bool:
    """Whether a run holds ``manifest``'s lock now (it is writing to it). Takes no lock that
    lasts: a look only. False where locks are not available (Windows)."""
    path = _lock_path(manifest)
    if fcntl is None or not path.exists():
        return False
    with path.open("rb") as f:
        try:  # shared: a run holds it alone; two readers never get in each other's way
            fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return False


class ManifestWriter:
    """Appends records to a manifest, each batch flushed to the disk before returning.

    Use it as a context manager; it takes the manifest's lock on entry. Blocking: call its
    methods from a worker thread in async code; :meth:`commit` from any number at once, the
    others one at a time.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = Path(d, "manifest.jsonl")
        ...     with ManifestWriter(p) as w:
        ...         w.append([ManifestRecord(source="a", path="/a", sha256=None,
        ...                                  status=RecordStatus.INVALID)])
        ...     read_manifest(p).records["a"].status
        <RecordStatus.INVALID: 'invalid'>
    """

    def __init__(
        self, path: Path, *, output_dir: Path | None = None, share_folder: bool = False
    ) -> None:
        """``output_dir``: the folder the records' outputs are in, locked too (see above).
        ``share_folder``: the shards of one job (``--shard``) write into one folder, each with
        its own manifest: they hold the folder's lock together (shared), and any other run is
        kept out (it takes the folder's lock alone)."""
        self.path = path
        self.output_dir = output_dir
        self.share_folder = share_folder
        self._lock_files: list[IO[bytes]] = []
        self._file: IO[bytes] | None = None
        self._queue: list[_Ticket] = []
        self._queue_lock = threading.Lock()
        self._arrived = threading.Condition(self._queue_lock)
        self._commit_lock = threading.Lock()
        self.commits = 0  # commits made (each: folders flushed, one append, one flush)

    def __enter__(self) -> ManifestWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _lock(self) -> None:
        self._lock_one(self.path, f"another run is using {self.path} (its lock file is held)")
        if self.output_dir is None:
            return
        default = self.output_dir / MANIFEST_NAME
        if default.absolute() != self.path.absolute():
            self.output_dir.mkdir(parents=True, exist_ok=True)
            try:
                self._lock_one(
                    default,
                    f"another run is writing into {self.output_dir} (its lock file is held)",
                    shared=self.share_folder,
                )
            except BaseException:
                self._unlock()
                raise

    def _lock_one(self, manifest: Path, held: str, *, shared: bool = False) -> None:
        lock_file = _lock_path(manifest).open("ab")
        if fcntl is not None:
            try:
                mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
                fcntl.flock(lock_file.fileno(), mode | fcntl.LOCK_NB)
            except BlockingIOError:
                lock_file.close()
                raise ManifestLockedError(held) from None
        self._lock_files.append(lock_file)

    def _unlock(self) -> None:
        for lock_file in self._lock_files:
            with contextlib.suppress(OSError):
                lock_file.close()
        self._lock_files = []

    def compact(self, state: ManifestState) -> None:
        """Rewrite the file atomically with only the latest record per source.

        Raises:
            ManifestWriteError: the new file cannot be written; the old one is left as it was.
        """
        self._close_file()
        data = "".join(r.to_json() + "\n" for r in state.records.values())
        try:
            atomic_write_bytes(self.path, data.encode("utf-8"))
        except OSError as exc:
            raise ManifestWriteError(self.path, exc) from exc

    def commit(
        self,
        records: Sequence[ManifestRecord],
        *,
        folders: Iterable[Path] = (),
        linger: float = 0.0,
        more: Callable[[int], bool] | None = None,
    ) -> None:
        """Flush ``folders`` (:func:`~clipnormals._atomic.fsync_dir`), then append ``records``
        and flush the manifest: a group commit, safe to call from many threads at once.

        One commit runs at a time. Callers that arrive while one runs queue their records; the
        first of them to get its turn commits the whole queue (every queued caller's folders,
        then every queued caller's records, in one write and one flush), and the others return
        as soon as their records are on the disk. So whatever the instant of a kill or a power
        cut, a record on the disk names an output whose folder was flushed before it.

        A flush costs the same for one record as for fifty. With ``linger`` (seconds) and
        ``more`` (called with the number of queued callers, true while more are on their way),
        the committing caller first waits up to ``linger`` for the others to queue, so that
        one flush serves several.

        Raises:
            ManifestWriteError: the group's records could not be appended (every caller in the
                group gets it); none of them is in the file.
            OSError: a folder could not be flushed; the records were not appended.
        """
        ticket = _Ticket(records, tuple(folders))
        with self._arrived:
            self._queue.append(ticket)
            self._arrived.notify()
        with self._commit_lock:
            if not ticket.done:
                with self._arrived:
                    if linger > 0 and more is not None:
                        deadline = time.monotonic() + linger
                        while more(len(self._queue)):
                            left = deadline - time.monotonic()
                            if left <= 0:
                                break
                            self._arrived.wait(left)
                    group, self._queue = self._queue, []
                try:
                    for folder in sorted({f for t in group for f in t.folders}):
                        fsync_dir(folder)
                    self.append(r for t in group for r in t.records)
                except BaseException as exc:
                    for t in group:
                        t.error = exc
                    raise
                finally:
                    for t in group:
                        t.done = True
                    self.commits += 1
        if ticket.error is not None:
            error = ticket.error
            # The thread that ran the commit raises the original; a new one keeps tracebacks apart.
            if isinstance(error, ManifestWriteError):
                raise ManifestWriteError(self.path, error) from error
            raise OSError(f"committing {self.path} failed: {error}") from error

    def append(self, records: Iterable[ManifestRecord]) -> None:
        """Append records as whole lines and flush them to the disk.

        Raises:
            ManifestWriteError: they could not be written; the file is cut back to its length
                before the append (whole records only).
        """
        data = "".join(r.to_json() + "\n" for r in records).encode("utf-8")
        if not data:
            return
        try:
            f = self._open()
        except OSError as exc:
            self._close_file()
            raise ManifestWriteError(self.path, exc) from exc
        start = f.seek(0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:  # unbuffered: a short write is finished here, a failed one raises
                written = f.write(view)
                view = view[written or 0 :]
            os.fsync(f.fileno())
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(f.fileno(), start)  # freeing blocks: allowed on a full disk
            raise ManifestWriteError(self.path, exc) from exc

    def _open(self) -> IO[bytes]:
        if self._file is None:
            created = not self.path.exists()
            self._file = self.path.open("ab", buffering=0)
            try:
                self._cut_torn_tail(self._file)
                if created:
                    fsync_dir(self.path.parent)
            except OSError:
                self._close_file()
                raise
        return self._file

    def _cut_torn_tail(self, f: IO[bytes]) -> None:
        # A partial last line would swallow the next record: finish it when it is a whole
        # record that only lacks its newline, else cut the file back to its last newline.
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        with self.path.open("rb") as r:
            block = min(size, 1 << 16)
            r.seek(size - block)
            tail = r.read(block)
        if tail.endswith(b"\n"):
            return
        cut = tail.rfind(b"\n")
        if cut < 0 and block < size:
            f.write(b"\n")  # a line longer than any record: leave it, the reader skips it
            return
        try:
            ManifestRecord.from_json(tail[cut + 1 :].decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            os.truncate(self.path, size - block + cut + 1)
            f.seek(0, os.SEEK_END)
        else:
            f.write(b"\n")

    def _close_file(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):  # unbuffered: nothing is left to write
                self._file.close()
            self._file = None

    def close(self) -> None:
        """Close the manifest and release the lock."""
        self._close_file()
        self._unlock()
