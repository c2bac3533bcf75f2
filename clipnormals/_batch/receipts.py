"""Receipts: a small proof, written with each upload's output, that the output is that source's.

A manifest can be lost or cut short (a disk restored from a backup, a file truncated by hand,
a run killed between writing an output and recording it). The outputs are still there, and they
were paid for. Before an output of a fresh upload is written, its receipt is appended to the
run's own receipt log under ``.clipnormals/receipts/`` (one JSON line, naming the output's
SHA-256 and the source's, since two different sources may well get byte-identical normal maps,
with the output's size, the upload's geometry and its cost). A later run that finds an output
without a trustworthy record hashes it, looks for a receipt of that output for the source's
current content, and adopts the output when there is one: the output is recorded ``done``
without being bought again. Nothing else is ever adopted: an output whose hash has no receipt,
or whose receipt names other content, is processed as usual.

A receipt needs no flush of its own to be safe: it only ever vouches for the exact bytes it
names, is read only by a later run (the manifest's lock keeps two runs apart; shards write logs
of their own), and a receipt lost, or cut short by a kill or a power cut, is not a JSON line
(any prefix of a JSON object is not one): that means "not adopted", never a wrong adoption. It
costs one ``write`` system call; the log is opened at the run's first receipt. (Receipts were
one file each before, three system calls and a new file per upload, which cost a tenth of a
batch's time on ext4; that layout, ``receipts/<2 hex>/<output>-<source>.json``, is still read.)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from .._atomic import ensure_folder, write_all
from .discover import open_regular
from .jobs import RECEIPTS_DIR
from .manifest import Geometry, plain_text

__all__ = ["Receipt", "ReceiptLog", "find_receipts", "receipt_path", "write_receipt"]

_VERSION = 1
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class Receipt:
    """What the receipt of one output says.

    Attributes:
        output_sha256, output_size: the output's hash and size.
        source_sha256: the SHA-256 of the source that was uploaded.
        geometry: the upload's geometry, when known.
        credits: what the upload cost.
        done_at: when the output was produced.
    """

    output_sha256: str
    output_size: int
    source_sha256: str
    geometry: Geometry | None = None
    credits: int = 0
    done_at: str | None = None


def receipt_path(output_dir: Path, output_sha256: str, source_sha256: str) -> Path:
    """Where a receipt of the earlier layout, one file each, lives."""
    name = f"{output_sha256}-{source_sha256}.json"
    return output_dir / RECEIPTS_DIR / output_sha256[:2] / name


_APPEND = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
_LOG_SUFFIX = ".jsonl"


class ReceiptLog:
    """The receipts one run writes: lines appended to a file of its own,
    ``.clipnormals/receipts/<UTC time>-<pid>-<random>.jsonl``, opened at the first receipt.

    Thread-safe (the batch writes from worker threads); :meth:`close` when the run ends.
    """

    def __init__(self, output_dir: Path) -> None:
        self._folder = output_dir / RECEIPTS_DIR
        self._fd: int | None = None
        self._lock = threading.Lock()
        self._closed = False

    def write(self, receipt: Receipt, *, known: set[Path] | None = None) -> None:
        """Append the receipt of an output, before the output itself is written (not flushed:
        see above). ``known``: folders known to exist (see
        :func:`clipnormals._atomic.ensure_folder`).

        Raises:
            OSError: the log could not be created or written (the output must not be written).
            ValueError: the log was closed.
        """
        line = (json.dumps(_to_json(receipt), separators=(",", ":")) + "\n").encode()
        with self._lock:
            if self._closed:
                raise ValueError("the receipt log is closed")
            if self._fd is None:
                ensure_folder(self._folder, known)
                stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
                name = f"{stamp}-{os.getpid()}-{secrets.token_hex(4)}{_LOG_SUFFIX}"
                self._fd = os.open(self._folder / name, _APPEND, 0o666)
            write_all(self._fd, line)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._fd is not None:
                fd, self._fd = self._fd, None
                os.close(fd)

    def __enter__(self) -> ReceiptLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def write_receipt(output_dir: Path, receipt: Receipt, *, known: set[Path] | None = None) -> None:
    """Write one receipt, in a log of its own (a run keeps one :class:`ReceiptLog` instead)."""
    with ReceiptLog(output_dir) as log:
        log.write(receipt, known=known)


def find_receipts(
    output_dir: Path, wanted: Mapping[tuple[str, str], int]
) -> dict[tuple[str, str], Receipt]:
    """The receipts found for ``wanted`` ``(output SHA-256, source SHA-256)`` pairs, by pair;
    each pair maps to the size of the output on the disk, which the receipt must state.

    Reads the logs once (only the wanted receipts are kept), and the files of the earlier layout
    for the pairs the logs do not have. A line or file that is cut short, not JSON, not a
    well-formed receipt, about other content or of another size is passed over.
    """
    missing = dict(wanted)
    found: dict[tuple[str, str], Receipt] = {}
    if not missing:
        return found
    for data in _logged(output_dir / RECEIPTS_DIR):
        receipt = _from_json(data)
        if receipt is not None:
            pair = (receipt.output_sha256, receipt.source_sha256)
            if missing.get(pair) == receipt.output_size:
                found[pair] = receipt
                del missing[pair]
    for pair, size in missing.items():
        with contextlib.suppress(OSError), open_regular(receipt_path(output_dir, *pair)) as file:
            receipt = _from_json(_parsed(file.read()))
            if receipt is not None and (
                (receipt.output_sha256, receipt.source_sha256, receipt.output_size) == (*pair, size)
            ):
                found[pair] = receipt
    return found


def _logged(folder: Path) -> Iterator[Any]:
    try:
        logs = sorted(p for p in folder.iterdir() if p.name.endswith(_LOG_SUFFIX))
    except OSError:
        return
    for log in logs:
        # a regular file only, opened without blocking: a FIFO of that name would wait forever
        with contextlib.suppress(OSError), open_regular(log) as lines:
            for line in lines:
                yield _parsed(line)


def _parsed(text: bytes) -> Any:
    """The JSON value of ``text``; ``None`` for anything else (cut short, garbage, nested
    deeper than the parser goes)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _to_json(receipt: Receipt) -> dict[str, Any]:
    return {
        "version": _VERSION,
        "output_sha256": receipt.output_sha256,
        "output_size": receipt.output_size,
        "source_sha256": receipt.source_sha256,
        "geometry": None if receipt.geometry is None else receipt.geometry.to_json(),
        "credits": receipt.credits,
        "done_at": receipt.done_at,
    }


def _from_json(data: Any) -> Receipt | None:
    """The receipt ``data`` holds, or ``None`` when it is not a well-formed receipt of this
    version (anything a hand or a fault could leave there is passed over: wrong types, numbers
    too large, text that cannot be written back)."""
    if not isinstance(data, dict) or data.get("version") != _VERSION:
        return None
    output, source = data.get("output_sha256"), data.get("source_sha256")
    size, credits = data.get("output_size"), data.get("credits", 0)
    done_at, geometry = data.get("done_at"), data.get("geometry")
    if not (
        _is_sha256(output)
        and _is_sha256(source)
        and type(size) is int
        and size >= 0
        and (credits is None or (type(credits) is int and credits >= 0))
        and (done_at is None or plain_text(done_at))
    ):
        return None
    try:
        shape = Geometry.from_json(geometry) if geometry is not None else None
    except ValueError:
        return None
    return Receipt(
        output_sha256=output,
        output_size=size,
        source_sha256=source,
        geometry=shape,
        credits=credits or 0,
        done_at=done_at,
    )


def _is_sha256(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and _SHA256.fullmatch(value) is not None
