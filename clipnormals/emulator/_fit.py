"""Where the subject of a photo is, crudely: enough to place the synthetic template on it.

Not a person detector and not a segmentation: a colour-contrast guess, numpy and Pillow only,
deterministic, a few milliseconds on its 64-cell grid (``python benchmarks/emulator_fit.py``:
at most a few percent of the cost of building the map it places, from 0.25 to 25 megapixels).
The steps:

1. the photo is reduced to at most ``GRID`` cells on its long side (JPEG decodes at 1/8 scale);
2. the background is sampled where a portrait's subject rarely is: a band along the top, and
   bands down the left and right edges over their upper third (the body leaves the frame at the
   bottom, and often at the lower sides);
3. saliency is each cell's distance (in an opponent colour space) to the background samples,
   the distance to the tenth-percentile nearest sample, so that a few subject cells among the
   samples (hair touching the top) do not hide the subject; blurred, then weighted by a broad
   prior for the middle columns;
4. Otsu's threshold picks seeds, hysteresis grows them down to half of it, and the connected
   region with the most saliency is the subject (after a one-cell closing); a strong region
   above it and over its middle joins it (hair, when a face as plain as the wall behind it
   splits it from the shoulders);
5. the region's top rows are the head's cap: an ellipse with the template's proportions is
   fitted to their widths (least squares, closed form), giving the head's width; its centre is
   the cap's mean column. The blur and the hysteresis grow the region by about a cell past a
   contrasted edge, which the fit takes off again;
6. the region's mass below the shoulders, within the torso's reach, gives the torso's lean.

:meth:`~clipnormals.emulator._template.Placement.around_head` turns that into the template's box.
When the photo is too small to bother (under ``MIN_PIXELS``), flat, or the region is implausible
(a speck, nearly the whole frame, nothing above the lower fifth), there is no estimate and the
template stays where it always was.
"""

from __future__ import annotations

import io
import math
from typing import Final

import numpy as np
import numpy.typing as npt
from PIL import Image

from ._template import HEAD_TOP, HEAD_WIDTH, MAX_LEAN, SHOULDERS, TORSO_HALF_WIDTH, Placement

__all__ = ["GRID", "MIN_PIXELS", "fit_placement", "subject_mask"]

GRID: Final = 64  # long side of the saliency grid, in cells
MIN_PIXELS: Final = 128 * 128  # smaller photos keep the default placement (tests, benchmarks)

_BORDER = 0.04  # width of the background bands, as a fraction of the shorter side
_SIDES = 0.35  # how far down the side bands reach, as a fraction of the height
_QUANTILE = 0.1  # which nearest background sample counts: the tenth percentile
_PRIOR_SIGMA = 0.3  # the middle-columns prior: a Gaussian across, sigma in frame widths
_MIN_CONTRAST = 12.0  # saliency below this (in 0..255 units) everywhere: a flat photo
_COMPANION = 0.25  # other regions kept with the strongest: at least this share of its saliency
_MIN_AREA = 0.02  # the subject region covers at least this fraction of the grid...
_MAX_AREA = 0.9  # ...and at most this
_MAX_TOP = 0.8  # a region starting lower than this is not a head and shoulders
_SIDE_RANGE = (0.25, 1.6)  # the template's side, in shorter sides of the frame
_HEAD_RATIO = 0.215 / 0.165  # the template head's height over its width
_SPREAD = 1  # cells the region reaches past a contrasted edge
_FULL_ROW = 0.75  # a row of the region this full is background, for the torso's lean
_CAP = 0.5  # the head's cap: the top half of its upper half (depth < _CAP * half-height)

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


def fit_placement(
    photo: bytes | Image.Image, *, size: tuple[int, int] | None = None
) -> Placement | None:
    """The template's box for a photo (encoded bytes or an image), in its stored pixels.

    ``size`` is the photo's (width, height) when ``photo`` is a reduced copy of it (a
    ``GRID``-pixel copy is all the fit looks at); by default, the photo's own size. None when
    the photo has fewer than ``MIN_PIXELS`` pixels, cannot be decoded, or shows no subject this
    crude estimate can find: the caller then keeps :meth:`Placement.centred`. Never raises for
    a bad image. Blocking (a JPEG decodes at 1/8 scale; PNG and WebP decode fully): run it in a
    worker thread in async code.

    Example:
        >>> from PIL import Image, ImageDraw
        >>> photo = Image.new("RGB", (400, 300), (230, 230, 225))
        >>> draw = ImageDraw.Draw(photo)
        >>> draw.ellipse((40, 40, 120, 140), fill=(120, 70, 50))  # a head, left of centre
        >>> draw.rectangle((0, 150, 160, 299), fill=(30, 40, 90))  # shoulders
        >>> p = fit_placement(photo)
        >>> 60 < p.left + p.side / 2 < 100, 30 < p.top + 0.145 * p.side < 55
        (True, True)
    """
    try:
        grid, found = _reduced(photo, size)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        return None
    if grid is None:
        return None
    width, height = found
    region = subject_mask(grid)
    if region is None:
        return None
    return _placement(region, width, height)


def _reduced(
    photo: bytes | Image.Image, size: tuple[int, int] | None
) -> tuple[FloatArray | None, tuple[int, int]]:
    """The photo as float RGB at most ``GRID`` cells on its long side (None when it is under
    ``MIN_PIXELS``), and its full size."""
    if isinstance(photo, Image.Image):
        size = size or photo.size
        return (_to_grid(photo) if size[0] * size[1] >= MIN_PIXELS else None), size
    with Image.open(io.BytesIO(photo)) as image:
        full = image.size
        if full[0] * full[1] < MIN_PIXELS:
            return None, full
        if image.format == "JPEG":
            image.draft("RGB", (GRID, GRID))  # decodes at 1/2, 1/4 or 1/8 scale, >= GRID
        return _to_grid(image), full


def _to_grid(image: Image.Image) -> FloatArray:
    if image.mode != "RGB":
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB").convert("RGB")
    width, height = image.size
    scale = GRID / max(width, height)
    cells = (max(1, round(width * scale)), max(1, round(height * scale)))
    reduced = image.resize(cells, Image.Resampling.BOX, reducing_gap=2.0)
    return np.asarray(reduced, dtype=np.float64)


def subject_mask(rgb: FloatArray) -> BoolArray | None:
    """The subject's cells on a small RGB grid (H, W, 3, values 0..255), or None when none.

    Example:
        >>> grid = np.full((32, 32, 3), 220.0)
        >>> grid[10:, 8:20] = (40.0, 50.0, 90.0)
        >>> found = subject_mask(grid)
        >>> bool(found[20, 14]), bool(found[20, 28])
        (True, False)
    """
    height, width, _ = rgb.shape
    if height < 8 or width < 8:
        return None
    colour = _opponent(rgb)
    saliency = _blur(_distance_to_background(colour))
    if float(saliency.max()) < _MIN_CONTRAST:
        return None
    columns = (np.arange(width) + 0.5) / width
    prior = np.exp(-((columns - 0.5) ** 2) / (2 * _PRIOR_SIGMA**2))
    score = saliency * prior[np.newaxis, :]
    threshold = _otsu(score)
    seeds = score > threshold
    grown = score > threshold / 2.0
    labels = _label(_close(grown))
    weights = np.bincount(labels.ravel(), weights=(score * grown).ravel())
    weights[0] = 0.0  # label 0 is the background
    seeded = np.zeros_like(weights, dtype=bool)
    seeded[np.unique(labels[seeds])] = True
    weights[~seeded] = 0.0
    if not weights.any():
        return None
    main = int(np.argmax(weights))
    region: BoolArray = (labels == main) & grown
    # A face as plain as the wall behind it leaves the hair apart from the shoulders: a seeded
    # region at least a quarter as strong, above the main one's top and over its middle
    # columns, is the rest of the head.
    main_rows = np.flatnonzero(region.any(axis=1))
    main_cols = np.flatnonzero(region.any(axis=0))
    middle = (main_cols[0] + main_cols[-1] + 1) / 2.0
    half_span = (main_cols[-1] + 1 - main_cols[0]) / 4.0
    for other in np.flatnonzero(weights >= _COMPANION * float(weights[main])):
        if other == main:
            continue
        cells = (labels == other) & grown
        ys, xs = np.nonzero(cells)
        if ys.min() < main_rows[0] and abs(xs.mean() + 0.5 - middle) <= half_span:
            region |= cells
    area = float(region.mean())
    if not _MIN_AREA <= area <= _MAX_AREA:
        return None
    return region


def _opponent(rgb: FloatArray) -> FloatArray:
    """Luminance and two colour-opponent axes, all in 0..255-ish units."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return np.stack([(r + g + b) / 3.0, (r - g) / 2.0, (r + g) / 4.0 - b / 2.0], axis=-1)


def _distance_to_background(colour: FloatArray) -> FloatArray:
    """Each cell's colour distance to the backdrop: to the ``_QUANTILE`` nearest sample."""
    height, width, _ = colour.shape
    band = max(1, round(min(height, width) * _BORDER))
    upper = max(band + 1, round(height * _SIDES))
    samples = np.concatenate(
        [
            colour[:band].reshape(-1, 3),
            colour[band:upper, :band].reshape(-1, 3),
            colour[band:upper, -band:].reshape(-1, 3),
        ]
    )
    samples = samples.astype(np.float32)
    pixels = colour.reshape(-1, 3).astype(np.float32)
    # |p - s|^2 = |p|^2 + |s|^2 - 2 p.s: one small matrix product instead of a 3-D broadcast.
    squared = (pixels**2).sum(axis=1)[:, np.newaxis] + (samples**2).sum(axis=1)[np.newaxis, :]
    squared -= 2.0 * (pixels @ samples.T)
    k = max(1, math.ceil(len(samples) * _QUANTILE))
    nearest = np.partition(squared, k - 1, axis=1)[:, k - 1]
    out: FloatArray = np.sqrt(np.maximum(nearest, 0.0)).astype(np.float64).reshape(height, width)
    return out


def _blur(field: FloatArray) -> FloatArray:
    """3x3 box blur, edges replicated."""
    padded = np.pad(field, 1, mode="edge")
    rows, cols = field.shape
    total = np.zeros_like(field)
    for dy in range(3):
        for dx in range(3):
            total += padded[dy : dy + rows, dx : dx + cols]
    out: FloatArray = total / 9.0
    return out


def _otsu(values: FloatArray) -> float:
    """Otsu's threshold over 64 bins: the cut that best separates two classes."""
    counts, edges = np.histogram(values, bins=64)
    p = counts / counts.sum()
    centres = (edges[:-1] + edges[1:]) / 2.0
    below = np.cumsum(p)
    mean_below = np.cumsum(p * centres)
    total_mean = mean_below[-1]
    between = np.zeros_like(below)
    inside = (below > 0) & (below < 1)
    between[inside] = (total_mean * below[inside] - mean_below[inside]) ** 2 / (
        below[inside] * (1.0 - below[inside])
    )
    return float(edges[int(np.argmax(between)) + 1])


def _close(mask: BoolArray) -> BoolArray:
    """Dilate then erode by one cell (3x3): bridges one-cell gaps."""
    return ~_dilate(~_dilate(mask))


def _dilate(mask: BoolArray) -> BoolArray:
    padded = np.pad(mask, 1, constant_values=False)
    rows, cols = mask.shape
    out = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            out |= padded[dy : dy + rows, dx : dx + cols]
    return out


def _label(mask: BoolArray) -> npt.NDArray[np.int64]:
    """4-connected components, labelled 1..n in order of first cell (0: not in the mask).

    Minimum-label propagation with pointer jumping; on a 64-cell grid a few dozen sweeps.
    """
    rows, cols = mask.shape
    none = rows * cols
    labels = np.where(mask, np.arange(none).reshape(rows, cols), none)
    while True:
        padded = np.pad(labels, 1, constant_values=none)
        smallest = np.minimum.reduce(
            [
                labels,
                padded[:-2, 1:-1],
                padded[2:, 1:-1],
                padded[1:-1, :-2],
                padded[1:-1, 2:],
            ]
        )
        smallest = np.where(mask, smallest, none)
        flat = smallest.ravel()
        inside = flat < none
        flat[inside] = flat[flat[inside]]  # jump to the label's own label
        if np.array_equal(smallest, labels):
            break
        labels = smallest
    _, dense = np.unique(labels, return_inverse=True)
    dense = dense.reshape(rows, cols) + 1
    dense[~mask] = 0
    out: npt.NDArray[np.int64] = dense.astype(np.int64)
    return out


def _placement(region: BoolArray, width: int, height: int) -> Placement | None:
    """The template's box from the subject's cells, in pixels of the ``width`` x ``height``
    frame.

    The region is the subject grown by about ``_SPREAD`` cells all round (the blur, then the
    hysteresis's low threshold, take in the cells just outside a contrasted edge): its top is
    moved down and its widths narrowed by that much, except at the frame's top edge.
    """
    rows, cols = region.shape
    occupied = np.flatnonzero(region.any(axis=1))
    if occupied[0] > _MAX_TOP * rows:
        return None
    top = int(occupied[0])
    spread = _SPREAD if top > 0 else 0
    # A region grown by s cells is, s rows below its top, 2 s wider than the subject at its
    # top's depth plus s: fitting the grown rows, narrowed, from the grown top measures the
    # subject's head.
    half_width = _head_half_width(region[top:], shrink=2 * spread)
    cap_depth = max(2, round(_CAP * _HEAD_RATIO * half_width))
    centre = float(np.nonzero(region[top : top + cap_depth])[1].mean()) + 0.5
    cell_x, cell_y = width / cols, height / rows
    shorter = min(width, height)
    low, high = _SIDE_RANGE
    side = min(max(2.0 * half_width * cell_x / HEAD_WIDTH, low * shorter), high * shorter)
    head_top = (top + spread) * cell_y
    # The torso follows the subject's mass below the shoulders (a person leaning into the frame).
    # Only cells the torso could reach count, and not rows the region fills across that reach:
    # those are background it spilled into (a floor, the dark end of a gradient), not a body.
    below = round((head_top + (SHOULDERS - HEAD_TOP) * side) / cell_y)
    reach = (TORSO_HALF_WIDTH + MAX_LEAN) * side / cell_x
    first, last = max(0, math.floor(centre - reach)), min(cols, math.ceil(centre + reach))
    lower = region[below:, first:last]
    lower = lower[lower.mean(axis=1) < _FULL_ROW] if lower.size else lower
    lean = 0.0
    if lower.any():
        mass = first + float(np.nonzero(lower)[1].mean()) + 0.5
        lean = min(max((mass - centre) * cell_x / side, -MAX_LEAN), MAX_LEAN)
    return Placement.around_head(
        centre_x=centre * cell_x, head_top=head_top, head_width=HEAD_WIDTH * side, lean=lean
    )


def _head_half_width(head: BoolArray, *, shrink: float) -> float:
    """The half-width (cells) of the template-shaped ellipse that best fits the top rows of
    ``head`` (which start at the top of the head), each row ``shrink`` cells narrower.

    An ellipse of half-width a and half-height b = ratio * a, its top at depth 0, is
    ``w(d)^2 = 4 a^2 (2 d / b - d^2 / b^2)`` wide at depth d: linear in a once b is written as
    ratio * a, so a least-squares fit has a closed form. Only the upper part of the head is
    used (depth < ``_CAP`` b), where shoulders rarely reach.
    """
    counts = head.sum(axis=1).astype(np.float64)
    ratio = _HEAD_RATIO
    depth_limit = 3
    half = 1.0
    for _ in range(3):
        n = min(len(counts), max(2, depth_limit))
        d = np.arange(n) + 0.5
        w = np.maximum(counts[:n] - shrink, 0.5)
        # w^2 + (4 / ratio^2) d^2 = (8 / ratio) a d
        target = w**2 + (4.0 / ratio**2) * d**2
        half = float((target * d).sum() / ((8.0 / ratio) * (d * d).sum()))
        depth_limit = round(_CAP * ratio * half)
    return max(half, 0.5)
