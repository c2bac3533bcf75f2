"""What a batch run reads and writes: :class:`BatchConfig`."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .shard import Shard

__all__ = ["MANIFEST_NAME", "BatchConfig"]

MANIFEST_NAME = "manifest.jsonl"


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchConfig:
    """What a batch run reads and writes.

    How images are prepared (``strict``, limits), the quota, retries, credits and how many
    requests are in flight (``max_concurrency``) are the client's options: give
    :func:`run_batch` a client built with them.

    Args:
        inputs: files, folders (searched recursively; images recognised by their bytes) and
            text files listing paths, one a line.
        output_dir: where ``<key>.normals.jpg`` (the response bytes, untouched) is written, key
            being the source's path relative to its input.
        manifest: the JSONL manifest; default ``output_dir / "manifest.jsonl"``.
        npz: also write ``<key>.normals.npz`` (float32 ``normals``, bool ``mask``).
        previews: also write ``<key>.preview.jpg`` (source, normal map and a relit view).
        contact_sheets: also write ``contact-sheets/sheet-NNN.jpg`` over the finished images.
        flip_x, flip_y: negate X / Y in the ``.npz`` and previews (the JPEG is never changed).
        threads: worker threads for hashing sources, for the CPU work of writing (``.npz``,
            previews) and for reading and preparing uploads (in the client's threads). Plain
            outputs, which wait on the disk rather than the CPU, are written by up to
            ``max(threads, max_concurrency)`` threads: one per answer in hand.
        cwd: the directory relative inputs are taken from (default: the current one).
        shard: process only this shard of the inputs (see :class:`Shard`: split by the
            SHA-256 of each source's bytes); the default manifest becomes
            ``output_dir / "manifest.shard-K-of-N.jsonl"``, so that the N shards can share
            one output folder.
        workers: deprecated name of ``threads``.
        strict: deprecated: strictness is the client's option,
            ``AsyncClient(prepare=PrepareOptions(strict=True))``. Until it is removed,
            ``strict=True`` refuses the images the client downscaled to fit the API's limits.

    Example:
        >>> cfg = BatchConfig(inputs=["portraits"], output_dir=Path("out"))
        >>> cfg.manifest_path
        PosixPath('out/manifest.jsonl')
    """

    inputs: Sequence[str | os.PathLike[str]]
    output_dir: Path
    manifest: Path | None = None
    npz: bool = False
    previews: bool = False
    contact_sheets: bool = False
    flip_x: bool = False
    flip_y: bool = False
    threads: int = 2
    cwd: Path | None = None
    shard: Shard | None = None
    workers: int | None = None
    strict: bool | None = None

    def __post_init__(self) -> None:
        # A single path is a common slip: take it as one input, not as a string of characters.
        inputs = (self.inputs,) if isinstance(self.inputs, str | os.PathLike) else self.inputs
        object.__setattr__(self, "inputs", tuple(os.fspath(i) for i in inputs))
        object.__setattr__(self, "output_dir", Path(self.output_dir))
        if self.manifest is not None:
            object.__setattr__(self, "manifest", Path(self.manifest))
        if not self.inputs:
            raise ValueError("BatchConfig.inputs must name at least one file or folder")
        if self.workers is not None:
            warnings.warn(
                "BatchConfig(workers=...) is deprecated: use threads=... (the same thing)",
                DeprecationWarning,
                stacklevel=3,
            )
            object.__setattr__(self, "threads", self.workers)
            object.__setattr__(self, "workers", None)
        if self.strict is not None:
            warnings.warn(
                "BatchConfig(strict=...) is deprecated: preparation is the client's, pass "
                "AsyncClient(prepare=PrepareOptions(strict=True))",
                DeprecationWarning,
                stacklevel=3,
            )
        if self.shard is not None and self.contact_sheets:
            raise ValueError(
                "BatchConfig: contact sheets are drawn over one manifest; a shard (shard=...) "
                "sees only its own part of the job"
            )
        if self.threads < 1:
            raise ValueError("BatchConfig.threads must be at least 1")

    @property
    def manifest_path(self) -> Path:
        """The manifest's path."""
        if self.manifest is not None:
            return self.manifest
        name = self.shard.manifest_name if self.shard is not None else MANIFEST_NAME
        return self.output_dir / name

    @property
    def any_extras(self) -> bool:
        """True when outputs beyond the response JPEG (``.npz``, previews) are asked for."""
        return self.npz or self.previews
