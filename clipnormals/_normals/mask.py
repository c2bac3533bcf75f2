"""The person mask of a normal map, robust to JPEG artefacts, in numpy only.

The API paints the background exactly (128, 128, 255), but JPEG moves it: a few levels in flat
areas, 13 to 28 a few pixels from the outline and up to about 100 right at it. A person pixel near
the outline, on the other hand, has a normal almost perpendicular to the view, so it is over 100
levels away from the background colour; half-way between is a threshold that puts the mask edge
where the JPEG-blurred step crosses its middle.

The steps: threshold; a 3x3 opening (first, so that JPEG speckles do not split the background
into pieces); fill holes; drop blobs too small to be a person.

Thresholding leaves holes wherever the person faces the camera (a normal of (0, 0, 1) *is* the
background colour). Enclosed holes are filled. A hole that reaches the frame (the front of a
torso cut off by the bottom edge) must be filled too, but real background can also reach the
frame between an arm and the body. Two signs tell them apart: the rim (real background meets the
person at an occluding contour, where the normal turns sideways, while a face-on patch fades into
its surroundings) and the inside (background is flat, a face-on patch is shaded). A gap open to
the frame is filled only when both agree, since taking the background for the person would
swallow the frame.

Connected components are labelled over run lengths with a vectorised union-find, so the cost
grows with the number of runs (a few per row), not with the number of pixels.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["BACKGROUND_RGB", "MASK_THRESHOLD", "Runs", "background_distance", "person_mask"]

BACKGROUND_RGB = (128, 128, 255)
#: Max per-channel distance from the background colour above which a pixel is the person.
MASK_THRESHOLD = 48
#: A rim sample whose normal has an XY part this long (in encoded levels, 127 = 1) is an occluding
#: contour: about 0.7, half-way between a silhouette (near 1) and the edge of a face-on patch.
_STEEP = 90
#: Rim samples are taken this many pixels past the end of a background run, beyond JPEG's blur.
_RIM_REACH = 3
#: A gap is real background when at least this share of its rim is steep: a gap open to the frame
#: is either background or the face-on front of a body cut off by the frame; an enclosed one is a
#: face-on patch unless nearly all its rim is silhouette.
_FRAME_STEEP_SHARE = 0.5
_ENCLOSED_STEEP_SHARE = 0.8
#: Distance from the background colour at the middle of a row that counts as shaded surface.
_SHADED = 8

_CHUNK_ROWS = 64

_Bool = NDArray[np.bool_]
_Int = NDArray[np.intp]


def background_distance(rgb: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Max over channels of ``|c - (128, 128, 255)|``, uint8 (H, W).

    Example:
        >>> background_distance(np.array([[[128, 128, 255], [100, 140, 250]]], np.uint8))
        array([[ 0, 28]], dtype=uint8)
    """
    height = rgb.shape[0]
    out = np.empty(rgb.shape[:2], dtype=np.uint8)
    # numpy is slow on the interleaved (H, W, 3) layout; a few rows at a time are made planar,
    # which keeps every operation contiguous and the working set in cache.
    for top in range(0, height, _CHUNK_ROWS):
        # A copy, always: the planes are changed in place, and a read-only (H, W, 3) input can
        # transpose to a contiguous view (1x1) that ascontiguousarray would not copy.
        red, green, blue = rgb[top : top + _CHUNK_ROWS].transpose(2, 0, 1).copy()
        o = out[top : top + _CHUNK_ROWS]
        # XOR 128 is c - 128 modulo 256; min(s, -s) is then |c - 128| in uint8 arithmetic.
        red ^= 128
        green ^= 128
        np.minimum(red, -red, out=o)
        np.maximum(o, np.minimum(green, -green), out=o)
        np.maximum(o, np.invert(blue, out=blue), out=o)
    return out


def person_mask(
    rgb: NDArray[np.uint8], *, threshold: int = MASK_THRESHOLD, min_blob: int | None = None
) -> _Bool:
    """Bool (H, W) mask of the person in a decoded normal map.

    Example:
        >>> rgb = np.full((40, 40, 3), (128, 128, 255), np.uint8)
        >>> rgb[10:30, 10:30] = (200, 128, 200)
        >>> int(person_mask(rgb).sum())
        400
    """
    dist = background_distance(rgb)
    height, width = dist.shape
    fg = _open3(dist > threshold)
    fg = _fill_holes(fg, rgb, dist)
    if min_blob is None:
        min_blob = max(16, (height * width) // 10_000)
    return _drop_small(fg, min_blob)


# --------------------------------------------------------------------------- runs and labels


class Runs:
    """Horizontal runs of True pixels: row, start column, end column (exclusive).

    Sorted by (row, start), which :meth:`labels` relies on.
    """

    __slots__ = ("end", "row", "start", "width")

    def __init__(self, row: _Int, start: _Int, end: _Int, width: int) -> None:
        self.row = row
        self.start = start
        self.end = end
        self.width = width

    @classmethod
    def of(cls, binary: _Bool) -> Runs:
        height, width = binary.shape
        stride = width + 1
        # change[r, c] is True where column c starts a run or ends one (c is the end, exclusive):
        # within a row changes alternate start, end, start, end.
        size = height * stride
        flat = np.zeros(-(-size // 8) * 8, dtype=bool)
        change = flat[:size].reshape(height, stride)
        change[:, 0] = binary[:, 0]
        np.not_equal(binary[:, 1:], binary[:, :-1], out=change[:, 1:width])
        change[:, width] = binary[:, -1]
        # Changes are sparse: find the non-zero 8-byte words first, then the bytes within them.
        words = np.flatnonzero(flat.view(np.uint64))
        hit_word, hit_byte = np.nonzero(flat.reshape(-1, 8)[words])
        pos = words[hit_word] * 8 + hit_byte
        rows, cols = np.divmod(pos, stride)
        return cls(rows[0::2], cols[0::2], cols[1::2], width)

    def __len__(self) -> int:
        return len(self.row)

    @property
    def length(self) -> _Int:
        return self.end - self.start

    def complement(self, height: int) -> Runs:
        """The runs of the False pixels of the same image."""
        width = self.width
        n = len(self)
        if n == 0:
            rows = np.arange(height)
            return Runs(rows, np.zeros(height, np.intp), np.full(height, width, np.intp), width)
        first = np.ones(n, dtype=bool)
        first[1:] = self.row[1:] != self.row[:-1]
        last = np.ones(n, dtype=bool)
        last[:-1] = first[1:]
        # The gap before each run (from the previous run's end, or the row's start) and after
        # the last run of each row; rows without any run are one full-width gap.
        prev_end = np.empty(n, dtype=np.intp)
        prev_end[1:] = self.end[:-1]
        prev_end[first] = 0
        empty_rows = np.setdiff1d(np.arange(height), self.row, assume_unique=True)
        row = np.concatenate([self.row, self.row[last], empty_rows])
        start = np.concatenate([prev_end, self.end[last], np.zeros(len(empty_rows), np.intp)])
        end = np.concatenate(
            [self.start, np.full(int(last.sum()), width, np.intp), np.full(len(empty_rows), width)]
        )
        keep = end > start
        row, start, end = row[keep], start[keep], end[keep]
        order = np.lexsort((start, row))
        return Runs(row[order], start[order], end[order], width)

    def labels(self) -> tuple[_Int, int]:
        """Component label per run (4-connectivity) and the number of components."""
        n = len(self)
        if n == 0:
            return np.zeros(0, dtype=np.intp), 0
        stride = self.width + 1
        key_start = self.row * stride + self.start
        key_end = self.row * stride + self.end
        below = (self.row + 1) * stride
        # Runs j on the next row overlapping run i: end_j > start_i and start_j < end_i. In the
        # (row, column) order they form one contiguous slice.
        lo = np.searchsorted(key_end, below + self.start, side="right")
        hi = np.searchsorted(key_start, below + self.end, side="left")
        counts = np.clip(hi - lo, 0, None)
        total = int(counts.sum())
        first = np.repeat(np.arange(n), counts)
        offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        second = np.repeat(lo, counts) + offsets
        roots = _union_find(n, first, second)
        uniq, labels = np.unique(roots, return_inverse=True)
        return labels.astype(np.intp), len(uniq)

    def paint(self, select: _Bool, shape: tuple[int, int]) -> _Bool:
        """Bool image with the selected runs set."""
        height, width = shape
        # Over the flattened image the selected runs cut it into alternating unset and set
        # stretches; np.repeat writes each stretch in one go.
        flat = self.row[select] * width
        bounds = np.empty(2 * len(flat) + 2, dtype=np.intp)
        bounds[0] = 0
        bounds[1:-1:2] = flat + self.start[select]
        bounds[2:-1:2] = flat + self.end[select]
        bounds[-1] = height * width
        values = np.zeros(len(bounds) - 1, dtype=bool)
        values[1::2] = True
        return np.repeat(values, np.diff(bounds)).reshape(height, width)


def _union_find(n: int, a: _Int, b: _Int) -> _Int:
    """Root (smallest member) of every node after joining the pairs (a, b)."""
    parent = np.arange(n)
    while True:
        ra, rb = parent[a], parent[b]
        differ = ra != rb
        if not differ.any():
            return parent
        lo = np.minimum(ra[differ], rb[differ])
        hi = np.maximum(ra[differ], rb[differ])
        # Roots only ever point at smaller roots, so no cycle can form.
        np.minimum.at(parent, hi, lo)
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped


# --------------------------------------------------------------------------- the three steps


def _fill_holes(fg: _Bool, rgb: NDArray[np.uint8], dist: NDArray[np.uint8]) -> _Bool:
    height, width = fg.shape
    runs = Runs.of(fg).complement(height)
    labels, count = runs.labels()
    on_frame = np.zeros(count, dtype=bool)
    on_frame[labels[(runs.start == 0) | (runs.end == width)]] = True
    on_frame[labels[(runs.row == 0) | (runs.row == height - 1)]] = True
    steep = _rim_steepness(runs, labels, count, rgb)
    # A face-on patch is shaded: the middle of its rows is off the background colour by a few
    # levels. Real background is flat there; JPEG only disturbs it near the outline.
    middle = dist[runs.row, (runs.start + runs.end) // 2] >= _SHADED
    shaded = np.bincount(labels, weights=middle, minlength=count) / np.bincount(
        labels, minlength=count
    )
    # Enclosed gaps are filled unless their rim is all silhouette (background seen through a
    # bent arm). A gap open to the frame is filled only when both signs say face-on patch:
    # mistaking the background for the person would swallow the whole frame.
    background = np.where(
        on_frame,
        (steep >= _FRAME_STEEP_SHARE) | (shaded < 0.5),
        steep >= _ENCLOSED_STEEP_SHARE,
    )
    holes = ~background[labels]
    if not holes.any():
        return fg
    return fg | runs.paint(holes, fg.shape)


def _rim_steepness(
    runs: Runs, labels: _Int, count: int, rgb: NDArray[np.uint8]
) -> NDArray[np.float64]:
    """Per component, the share of its left/right rim samples that lie on an occluding contour.

    The sample is the length of the normal's XY part: near 1 just inside a silhouette whatever
    the outline's direction, well below it where a face-on patch fades into its surroundings.
    """
    width = runs.width
    lab: list[_Int] = []
    steep: list[_Bool] = []
    for edge, step in ((runs.start, -1), (runs.end - 1, 1)):
        # A few pixels past the run's end, beyond JPEG's blur; clipped to the frame.
        has_rim = (edge + step >= 0) & (edge + step < width)
        reach = np.clip(edge + step * _RIM_REACH, 0, width - 1)[has_rim]
        px = rgb[runs.row[has_rim], reach].astype(np.int32) - 128
        xy2 = px[:, 0] * px[:, 0] + px[:, 1] * px[:, 1]
        lab.append(labels[has_rim])
        steep.append(xy2 >= _STEEP * _STEEP)
    total = np.bincount(np.concatenate(lab), minlength=count)
    hits = np.bincount(np.concatenate(lab), weights=np.concatenate(steep), minlength=count)
    return np.divide(hits, total, out=np.zeros(count), where=total > 0)


def _open3(fg: _Bool) -> _Bool:
    """3x3 opening: drops one- and two-pixel speckles and spurs along the outline."""
    return _dilate3(_erode3(fg))


def _erode3(a: _Bool) -> _Bool:
    # Separable; pixels outside the frame count as set, so the frame does not eat the person.
    h = a.copy()
    h[:, 1:] &= a[:, :-1]
    h[:, :-1] &= a[:, 1:]
    v = h.copy()
    v[1:] &= h[:-1]
    v[:-1] &= h[1:]
    return v


def _dilate3(a: _Bool) -> _Bool:
    h = a.copy()
    h[:, 1:] |= a[:, :-1]
    h[:, :-1] |= a[:, 1:]
    v = h.copy()
    v[1:] |= h[:-1]
    v[:-1] |= h[1:]
    return v


def _drop_small(fg: _Bool, min_blob: int) -> _Bool:
    runs = Runs.of(fg)
    if len(runs) == 0:
        return fg
    labels, count = runs.labels()
    area = np.bincount(labels, weights=runs.length, minlength=count)
    small = area[labels] < min_blob
    if not small.any():
        return fg
    return fg & ~runs.paint(small, fg.shape)
