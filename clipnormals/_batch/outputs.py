"""Writing a batch's outputs: the normal map bytes, optional extras, and their manifest records.

Blocking functions, run in worker threads by the batch runner. Every file is written atomically
(see :mod:`clipnormals._atomic`), and the records they return are appended to the manifest by the
caller only after all of them are in place.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from PIL import Image

from .._atomic import atomic_write_bytes
from .._errors import ClipnormalsError
from .._images.prepare import PreparedImage, PrepareOptions, prepare_image
from .._normals.export import npz_bytes as _npz
from .._normals.normalmap import NormalMap
from .._normals.sheets import contact_sheet
from .manifest import ManifestRecord, RecordStatus, utc_now
from .plan import Job, Member
from .types import BatchConfig

__all__ = [
    "SHEETS_DIR",
    "copy_outputs",
    "failed_records",
    "npz_bytes",
    "unsent_records",
    "write_contact_sheets",
    "write_outputs",
]

SHEETS_DIR = "contact-sheets"
_SHEET_ROWS = 8
_SHEET_TILE = 256
_PREVIEW_TILE = 320


def write_outputs(
    config: BatchConfig,
    job: Job,
    result: NormalMap,
    prepared: PreparedImage,
    attempts: int,
) -> list[ManifestRecord]:
    """Write a fresh result for every pending source of ``job``; return their records.

    The first source is the one that was sent (it carries the attempts and the credits); the
    others are copies of its output.
    """
    jpeg = result.jpeg
    digest, size = hashlib.sha256(jpeg).hexdigest(), len(jpeg)
    now = utc_now()
    primary = job.pending[0]
    records = []
    extras = _Extras(config, prepared, jpeg)
    for member in job.pending:
        atomic_write_bytes(config.output_dir / member.outputs.normals, jpeg)
        extras.write(member)
        first = member is primary
        consumed = result.credits_consumed if result.credits_consumed is not None else 1
        records.append(
            ManifestRecord(
                source=member.key,
                path=member.file.fspath,
                sha256=job.sha256,
                status=RecordStatus.DONE,
                output=member.outputs.normals,
                output_sha256=digest,
                output_size=size,
                attempts=attempts if first else 0,
                credits=consumed if first else 0,
                credits_remaining=result.credits_remaining if first else None,
                duplicate_of=None if first else primary.key,
                done_at=now,
                time=now,
            )
        )
    return records


def copy_outputs(config: BatchConfig, job: Job) -> list[ManifestRecord]:
    """Serve ``job`` without a request: copy an intact output, fill in missing extras.

    Pending sources get a copy (status ``done``, no credit); complete ones keep theirs
    (``skipped``), with their extras written when asked for and missing.
    """
    now = utc_now()
    records: list[ManifestRecord] = []
    source = job.reuse_record
    if source is None and job.complete:
        source = job.complete[0][1]
    if source is None or source.output is None:  # pragma: no cover - the plan never does this
        raise ValueError("copy_outputs needs an intact output to copy from")
    try:
        jpeg = (config.output_dir / source.output).read_bytes()
    except OSError as exc:
        return _failed(job.pending, job.sha256, f"cannot read {source.output}: {exc}", now) + [
            replace(record, status=RecordStatus.SKIPPED, time=now) for _m, record in job.complete
        ]
    if hashlib.sha256(jpeg).hexdigest() != source.output_sha256:
        return _failed(job.pending, job.sha256, f"{source.output} changed during the run", now)
    extras = _Extras(config, None, jpeg)
    for member in job.pending:
        atomic_write_bytes(config.output_dir / member.outputs.normals, jpeg)
        extras.write(member)
        records.append(
            ManifestRecord(
                source=member.key,
                path=member.file.fspath,
                sha256=job.sha256,
                status=RecordStatus.DONE,
                output=member.outputs.normals,
                output_sha256=source.output_sha256,
                output_size=len(jpeg),
                duplicate_of=source.source,
                done_at=now,
                time=now,
            )
        )
    for member, record in job.complete:
        extras.write(member)
        records.append(replace(record, status=RecordStatus.SKIPPED, time=now))
    return records


def failed_records(
    job: Job, error: ClipnormalsError, status: RecordStatus, *, attempts: int
) -> list[ManifestRecord]:
    """Records for every pending source of a job that failed or was rejected."""
    now = utc_now()
    primary = job.pending[0]
    return [
        ManifestRecord(
            source=member.key,
            path=member.file.fspath,
            sha256=job.sha256,
            status=status,
            attempts=attempts if member is primary else 0,
            error_type=type(error).__name__,
            error=error.message,
            duplicate_of=None if member is primary else primary.key,
            time=now,
        )
        for member in job.pending
    ]


def unsent_records(jobs: Sequence[Job], error_type: str, message: str) -> list[ManifestRecord]:
    """``not_sent`` records for every pending source of jobs that were never sent."""
    now = utc_now()
    return [
        ManifestRecord(
            source=member.key,
            path=member.file.fspath,
            sha256=job.sha256,
            status=RecordStatus.NOT_SENT,
            error_type=error_type,
            error=message,
            time=now,
        )
        for job in jobs
        for member in job.pending
    ]


def _failed(members: Sequence[Member], sha256: str, message: str, now: str) -> list[ManifestRecord]:
    return [
        ManifestRecord(
            source=m.key,
            path=m.file.fspath,
            sha256=sha256,
            status=RecordStatus.FAILED,
            error_type="OSError",
            error=message,
            time=now,
        )
        for m in members
    ]


class _Extras:
    """The ``.npz`` and preview of one content, decoded once and written for each source."""

    def __init__(self, config: BatchConfig, prepared: PreparedImage | None, jpeg: bytes) -> None:
        self.config = config
        self.prepared = prepared
        self.jpeg = jpeg
        self._map: NormalMap | None = None

    def _normal_map(self, member: Member) -> NormalMap:
        if self._map is None:
            prepared = self.prepared
            if prepared is None:
                # The orientation and size the map must be brought back to come from the source.
                prepared = prepare_image(
                    member.file.path, options=PrepareOptions(strict=self.config.strict)
                )
            self._map = NormalMap(
                self.jpeg, prepared=prepared, flip_x=self.config.flip_x, flip_y=self.config.flip_y
            )
        return self._map

    def write(self, member: Member) -> None:
        config = self.config
        out = config.output_dir
        if config.npz and not (out / member.outputs.npz).exists():
            atomic_write_bytes(out / member.outputs.npz, npz_bytes(self._normal_map(member)))
        if config.previews and not (out / member.outputs.preview).exists():
            atomic_write_bytes(
                out / member.outputs.preview, _preview_bytes(self._normal_map(member), member)
            )


def npz_bytes(nm: NormalMap) -> bytes:
    """The ``.npz`` of a normal map: float32 ``normals`` (H, W, 3) and bool ``mask`` (H, W),
    at the source's size as a viewer sees it (a downscale before upload undone)."""
    return _npz(normals=nm.normals_at_source(), mask=nm.mask_at_source())


def _jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _preview_bytes(nm: NormalMap, member: Member) -> bytes:
    sheet = contact_sheet([(member.file.path, nm)], names=[member.key], tile=_PREVIEW_TILE)
    return _jpeg(sheet)


def write_contact_sheets(
    config: BatchConfig, finished: Sequence[tuple[Path, Path]], *, rows: int = _SHEET_ROWS
) -> list[Path]:
    """Contact sheets (photo, normals, mask, relit) over ``(source, normal map)`` pairs.

    Written to ``<output>/contact-sheets/sheet-NNN.jpg``, ``rows`` images per sheet; sheets left
    from an earlier, longer run are removed. Returns the paths written.
    """
    folder = config.output_dir / SHEETS_DIR
    written: list[Path] = []
    options = PrepareOptions(strict=config.strict)
    ordered = sorted(set(finished), key=lambda pair: str(pair[1]))
    for number, start in enumerate(range(0, len(ordered), rows), start=1):
        entries: list[tuple[Path, NormalMap]] = []
        names: list[str] = []
        for source, output in ordered[start : start + rows]:
            try:
                prepared = prepare_image(source, options=options)
                nm = NormalMap(
                    output.read_bytes(), prepared=prepared, flip_x=config.flip_x,
                    flip_y=config.flip_y,
                )  # fmt: skip
            except (OSError, ClipnormalsError):
                continue  # changed or removed since: the sheet shows the rest
            entries.append((source, nm))
            names.append(
                output.relative_to(config.output_dir).as_posix().removesuffix(".normals.jpg")
            )
        if entries:
            path = folder / f"sheet-{number:03d}.jpg"
            atomic_write_bytes(path, _jpeg(contact_sheet(entries, names=names, tile=_SHEET_TILE)))
            written.append(path)
    keep = set(written)
    for stale in folder.glob("sheet-*.jpg"):
        if stale not in keep:
            stale.unlink(missing_ok=True)
    return written
