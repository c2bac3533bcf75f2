"""Folders of small test portraits with known duplicates and corrupt files."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image


def noise_image(seed: int, size: tuple[int, int] = (32, 24), fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


@dataclass
class Corpus:
    """What was written: keys (paths relative to the root) by role."""

    root: Path
    good: dict[str, bytes] = field(default_factory=dict)  # key -> bytes (duplicates included)
    corrupt: dict[str, str] = field(default_factory=dict)  # key -> what is wrong with it
    others: list[str] = field(default_factory=list)  # not images at all: ignored

    @property
    def distinct(self) -> int:
        return len({hashlib.sha256(b).digest() for b in self.good.values()})

    def sha(self, key: str) -> str:
        return hashlib.sha256(self.good[key]).hexdigest()


def make_corpus(root: Path, count: int, *, duplicates: int = 0, corrupt: bool = False) -> Corpus:
    """``count`` distinct images (PNG, JPEG and WEBP in nested folders), ``duplicates`` byte
    copies of some of them under other names, and with ``corrupt`` four broken files."""
    corpus = Corpus(root)
    formats = ("PNG", "JPEG", "WEBP")
    for i in range(count):
        fmt = formats[i % 3]
        key = f"set{i % 4}/{'deep/' if i % 5 == 0 else ''}img{i:04d}.{fmt.lower()}"
        corpus.good[key] = noise_image(i, fmt=fmt)
    originals = list(corpus.good.items())
    for j in range(duplicates):
        key, data = originals[(j * 7) % len(originals)]
        corpus.good[f"copies/dup{j:03d}{Path(key).suffix}"] = data
    if corrupt:
        png = noise_image(10_000)
        corpus.corrupt = {
            "broken/truncated.png": "truncated",
            "broken/empty.jpg": "empty",
            "broken/text.webp": "text",
            "broken/garbage.png": "garbage",
        }
        blobs = {
            "broken/truncated.png": png[: len(png) // 2],
            "broken/empty.jpg": b"",
            "broken/text.webp": b"this is not an image at all\n",
            "broken/garbage.png": bytes(range(256)) * 4,
        }
        for key, data in blobs.items():
            (root / key).parent.mkdir(parents=True, exist_ok=True)
            (root / key).write_bytes(data)
        corpus.others = ["README.txt"]
        (root / "README.txt").write_text("not an image, and not named like one\n")
    for key, data in corpus.good.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)
    return corpus
