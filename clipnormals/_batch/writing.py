"""Writing a content's outputs: the one write path for fresh results and for copies.

Blocking functions, run in worker threads by the batch runner. Every file is written atomically
(see :mod:`clipnormals._atomic`): its data is flushed to the disk before it is renamed into
place. The folders are not flushed here: :func:`write_content` returns the folders whose
entries changed, and the caller flushes them (once for all the outputs of a group commit) before
it appends the records, so a record never names an output that is not durably in place.

A fresh upload's :class:`~.records.Content` comes from the response; a copy's from an intact
output an earlier source paid for (:func:`read_output`, which checks it against its record).
Either way the same function writes the normal map for each source that needs one and the
extras (``.npz``, preview) that are missing, decoding the map at most once per content. The
``.npz`` is mapped back to the source's size and orientation with the geometry the manifest
kept, so no source is prepared again for it.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from .._atomic import atomic_write_bytes
from .._normals.export import npz_bytes as _npz
from .._normals.normalmap import NormalMap
from .._normals.sheets import contact_sheet
from .config import BatchConfig
from .jobs import Member
from .manifest import Geometry, ManifestRecord
from .receipts import Receipt, ReceiptLog
from .records import Content

__all__ = [
    "jpeg_bytes",
    "npz_bytes",
    "preview_bytes",
    "read_output",
    "write_content",
    "write_fresh",
]

_PREVIEW_TILE = 320


def npz_bytes(nm: NormalMap) -> bytes:
    """The ``.npz`` of a normal map: float32 ``normals`` (H, W, 3) and bool ``mask`` (H, W),
    at the source's size as a viewer sees it (a downscale before upload undone)."""
    return _npz(normals=nm.normals_at_source(), mask=nm.mask_at_source())


def jpeg_bytes(image: Image.Image, *, comment: bytes = b"") -> bytes:
    """A picture as a quality-90 JPEG, with an optional comment segment."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=90, comment=comment)
    return buf.getvalue()


def read_output(config: BatchConfig, record: ManifestRecord) -> Content:
    """The bytes of an output an earlier source paid for, checked against its record.

    Raises:
        OSError: the output cannot be read, or no longer matches its record's hash.
    """
    if record.output is None:
        raise OSError(f"the record of {record.source} names no output")
    jpeg = (config.output_dir / record.output).read_bytes()
    digest = hashlib.sha256(jpeg).hexdigest()
    if digest != record.output_sha256:
        raise OSError(f"{record.output} changed during the run")
    return Content(jpeg, digest, record.geometry, origin=record.source)


def write_fresh(
    config: BatchConfig,
    jpeg: bytes,
    geometry: Geometry | None,
    members: Sequence[Member],
    *,
    source_sha256: str,
    credits: int,
    done_at: str,
    receipts: ReceiptLog,
    known: set[Path] | None = None,
) -> tuple[Content, set[Path]]:
    """Write a fresh upload's answer (hashed here, off the event loop) as the normal map of
    every source in ``members`` (see :func:`write_content`), its receipt first, in
    ``receipts``: an output on the disk always has the proof that it belongs to its source,
    even when the record that follows is lost.

    Returns:
        The content written, and the folders to flush before its records are appended.
    """
    content = Content(jpeg, hashlib.sha256(jpeg).hexdigest(), geometry)
    receipt = Receipt(
        output_sha256=content.sha256,
        output_size=len(jpeg),
        source_sha256=source_sha256,
        geometry=geometry,
        credits=credits,
        done_at=done_at,
    )
    receipts.write(receipt, known=known)
    return content, write_content(config, content, members, known=known)


def write_content(
    config: BatchConfig,
    content: Content,
    members: Sequence[Member],
    *,
    extras_for: Sequence[Member] = (),
    known: set[Path] | None = None,
) -> set[Path]:
    """Write ``content`` as the normal map of every source in ``members``, and the missing
    extras of those and of ``extras_for`` (sources whose normal map is already in place).

    ``known``: folders known to exist (see :func:`clipnormals._atomic.ensure_folder`).

    Returns:
        The folders whose entries changed: flush each (:func:`clipnormals._atomic.fsync_dir`)
        before appending the records, or a power cut may lose an output its record names.

    Raises:
        OSError: a file could not be written; the records must not be appended.
    """
    out = config.output_dir
    folders: set[Path] = set()
    for member in members:
        path = out / member.outputs.normals
        folders.update(atomic_write_bytes(path, content.jpeg, sync_folder=False, known=known))
    if config.any_extras:
        extras = _Extras(config, content, known)
        for member in (*members, *extras_for):
            folders.update(extras.write(member))
    return folders


class _Extras:
    """The ``.npz`` and preview of one content, decoded once and written for each source."""

    def __init__(self, config: BatchConfig, content: Content, known: set[Path] | None) -> None:
        self.config = config
        self.content = content
        self.known = known
        self._map: NormalMap | None = None

    def _normal_map(self) -> NormalMap:
        if self._map is None:
            geometry = self.content.geometry
            self._map = NormalMap(
                self.content.jpeg,
                prepared=None if geometry is None else geometry.as_prepared(),
                flip_x=self.config.flip_x,
                flip_y=self.config.flip_y,
            )
        return self._map

    def write(self, member: Member) -> list[Path]:
        """Write the member's missing extras; return the folders to flush."""
        config = self.config
        out = config.output_dir
        folders: list[Path] = []
        if config.npz and not (out / member.outputs.npz).exists():
            data = npz_bytes(self._normal_map())
            folders += atomic_write_bytes(
                out / member.outputs.npz, data, sync_folder=False, known=self.known
            )
        if config.previews and not (out / member.outputs.preview).exists():
            preview = preview_bytes(self._normal_map(), member)
            folders += atomic_write_bytes(
                out / member.outputs.preview, preview, sync_folder=False, known=self.known
            )
        return folders


def preview_bytes(nm: NormalMap, member: Member) -> bytes:
    """The preview of one image: a one-row contact sheet, as a JPEG."""
    sheet = contact_sheet([(member.file.path, nm)], names=[member.key], tile=_PREVIEW_TILE)
    return jpeg_bytes(sheet)
