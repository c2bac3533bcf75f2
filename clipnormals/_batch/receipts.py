"""Receipts: a small proof, written with each upload's output, that the output is that source's.

A manifest can be lost or cut short (a disk restored from a backup, a file truncated by hand,
a run killed between writing an output and recording it). The outputs are still there, and they
were paid for. Before an output of a fresh upload is written, a receipt is written next to the
outputs, under ``.clipnormals/receipts/``, named after the output's SHA-256 and the source's
(two different sources may well get byte-identical normal maps) and holding both, the output's
size, the upload's geometry and its cost. A later run that finds an output without a
trustworthy record hashes it, looks up the receipt for that output and the source's current
content, and adopts the output when it is there: the output is recorded ``done`` without being
bought again. Nothing else is ever adopted: an output whose hash has no
receipt, or whose receipt names other content, is processed as usual.

A receipt needs no flush of its own to be safe, nor a rename into place: it only ever vouches
for the exact bytes its name hashes, is read only by a later run (the manifest's lock keeps two
runs apart), and a receipt lost, cut short or left empty by a kill or a power cut is not JSON
(any prefix of a JSON object is not one): that means "not adopted", never a wrong adoption. It
is written with three system calls (open, write, close): a batch writes one per upload.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .._atomic import ensure_folder, write_all
from .jobs import RECEIPTS_DIR
from .manifest import Geometry

__all__ = ["Receipt", "read_receipt", "receipt_path", "write_receipt"]

_VERSION = 1


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
    """Where the receipt of this output for this source lives."""
    name = f"{output_sha256}-{source_sha256}.json"
    return output_dir / RECEIPTS_DIR / output_sha256[:2] / name


_OPEN = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)


def write_receipt(output_dir: Path, receipt: Receipt, *, known: set[Path] | None = None) -> None:
    """Write the receipt of an output, before the output itself is written (not flushed, not
    renamed into place: see above).

    ``known``: folders known to exist (see :func:`clipnormals._atomic.ensure_folder`)."""
    data = {
        "version": _VERSION,
        "output_sha256": receipt.output_sha256,
        "output_size": receipt.output_size,
        "source_sha256": receipt.source_sha256,
        "geometry": None if receipt.geometry is None else receipt.geometry.to_json(),
        "credits": receipt.credits,
        "done_at": receipt.done_at,
    }
    text = json.dumps(data, separators=(",", ":")) + "\n"
    path = receipt_path(output_dir, receipt.output_sha256, receipt.source_sha256)
    ensure_folder(path.parent, known)
    fd = os.open(path, _OPEN, 0o666)
    try:
        write_all(fd, text.encode())
    finally:
        os.close(fd)


def read_receipt(output_dir: Path, output_sha256: str, source_sha256: str) -> Receipt | None:
    """The receipt of this output for this source, or ``None`` (missing, unreadable, or not
    about these two)."""
    path = receipt_path(output_dir, output_sha256, source_sha256)
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        data = json.loads(path.read_bytes())
        if (
            data.get("version") != _VERSION
            or data["output_sha256"] != output_sha256
            or data["source_sha256"] != source_sha256
        ):
            return None
        geometry = data.get("geometry")
        return Receipt(
            output_sha256=output_sha256,
            output_size=int(data["output_size"]),
            source_sha256=str(data["source_sha256"]),
            geometry=Geometry.from_json(geometry) if geometry is not None else None,
            credits=int(data.get("credits") or 0),
            done_at=data.get("done_at"),
        )
    return None
