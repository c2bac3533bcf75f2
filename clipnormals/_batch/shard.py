"""Splitting one input set between N runs: :class:`Shard`.

A source belongs to shard ``K`` of ``N`` when the first 8 bytes of the SHA-256 of its bytes,
read as a big-endian unsigned integer, leave ``K - 1`` when divided by ``N``. The content hash
depends on nothing but the file's bytes, so every machine that sees the same input set splits
it the same way, whatever its paths, its file system or its order of discovery; and identical
images always fall in the same shard, where the run uploads them once. A source that cannot be
hashed (unreadable, not an image) is given to a shard by the SHA-256 of its key (its path
relative to its input) in UTF-8, the same way, so that exactly one shard records it.

Each shard keeps its own manifest, ``manifest.shard-K-of-N.jsonl``, with its own lock: the N
runs can share one output folder. :func:`manifest_paths` finds every manifest of a folder, for
the whole job's status.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SHARD_MANIFEST_PATTERN", "Shard", "manifest_paths"]

#: Shard manifests in an output folder: ``manifest.shard-K-of-N.jsonl``.
SHARD_MANIFEST_PATTERN = re.compile(r"manifest\.shard-([1-9][0-9]*)-of-([1-9][0-9]*)\.jsonl")

_SPEC = re.compile(r"([0-9]+)/([0-9]+)")


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` of ``count`` (1-based: ``Shard(1, 3)`` is the first of three).

    Raises:
        ValueError: ``count`` below 1, or ``index`` outside ``1..count``.

    Example:
        >>> Shard.parse("2/3")
        Shard(index=2, count=3)
        >>> Shard.parse("2/3").manifest_name
        'manifest.shard-2-of-3.jsonl'
        >>> Shard(1, 1).owns_digest(bytes(32))
        True
    """

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"a job has at least one shard, not {self.count}")
        if not 1 <= self.index <= self.count:
            raise ValueError(f"shard {self.index} of {self.count}: K must be 1 to {self.count}")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"K/N"`` (1 <= K <= N) as a shard.

        Raises:
            ValueError: anything else, with what was expected.
        """
        match = _SPEC.fullmatch(text.strip())
        if match is None:
            raise ValueError(f"{text!r} is not K/N (for example 1/3: the first of three shards)")
        return cls(int(match.group(1)), int(match.group(2)))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def manifest_name(self) -> str:
        """This shard's manifest, in the output folder."""
        return f"manifest.shard-{self.index}-of-{self.count}.jsonl"

    def owns_digest(self, digest: bytes) -> bool:
        """True when a source whose SHA-256 (32 raw bytes) is ``digest`` is this shard's."""
        return int.from_bytes(digest[:8], "big") % self.count == self.index - 1

    def owns_key(self, key: str) -> bool:
        """True when a source that could not be hashed, named ``key``, is this shard's."""
        return self.owns_digest(hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest())


def manifest_paths(folder: Path, *, default: str) -> list[Path]:
    """The manifests in ``folder``: ``default`` (when present), then the shards' by name."""
    found = [folder / default] if (folder / default).is_file() else []
    shards: list[tuple[int, int, Path]] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        entries = []
    for path in entries:
        match = SHARD_MANIFEST_PATTERN.fullmatch(path.name)
        if match and path.is_file():
            shards.append((int(match.group(2)), int(match.group(1)), path))
    return found + [path for _n, _k, path in sorted(shards)]
