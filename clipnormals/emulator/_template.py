"""The synthetic person: one head-and-shoulders template, and where it stands in the frame.

The template is drawn in a square box, in units of the box's side (u across, v down from the
box's top): a head ellipse centred at (0.5, 0.36), 0.33 wide and 0.43 high; a neck 0.17 wide
from v = 0.45 to 0.82; a torso, a superellipse 0.86 wide whose outline starts at v = 0.72 and
which goes on straight down from v = 1.05, out of the frame. A :class:`Placement` says where the
box is; :func:`coverage` rasterises the template for the Poisson solve of ``_synth``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "HEAD_TOP",
    "HEAD_WIDTH",
    "MAX_LEAN",
    "PLACEMENT_STEPS",
    "SHOULDERS",
    "TORSO_HALF_WIDTH",
    "Placement",
    "coverage",
    "overhang",
]

# The template, in units of its box's side (u across, v down from the box's top).
HEAD_TOP: Final = 0.145  # the top of the head: v of the head ellipse's centre minus its radius
HEAD_WIDTH: Final = 0.33  # the head ellipse's width
TORSO_HALF_WIDTH: Final = 0.43
SHOULDERS: Final = 0.72  # where the torso's outline starts
MAX_LEAN: Final = 0.2  # the neck still meets the torso's top
PLACEMENT_STEPS: Final = 1024  # placements are kept to 1/1024 of the frame (one cache entry each)
_SUPERSAMPLE = 4  # coverage samples per cell side

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Placement:
    """Where the head-and-shoulders template is drawn: a square box, in pixels of the frame.

    In units of the box's side, the top of the head is 0.145 below the box's top, the head is
    0.33 wide and the shoulders 0.86, starting 0.72 below the top; the torso goes on down to the
    bottom of the frame, however far below the box that is. The box may reach outside the frame.

    Attributes:
        left, top: the box's top-left corner, pixels from the frame's top-left (x right, y down).
        side: the box's side in pixels, > 0.
        lean: how far the torso's centre is right of the head's, in sides (-0.2 to 0.2): a
            person leaning into the frame.

    Example:
        >>> Placement.centred(640, 480)
        Placement(left=80.0, top=0.0, side=480.0, lean=0.0)
        >>> Placement.around_head(centre_x=200, head_top=29, head_width=66).side
        200.0
    """

    left: float
    top: float
    side: float
    lean: float = 0.0

    def __post_init__(self) -> None:
        for name in ("left", "top", "side", "lean"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number")
        if self.side <= 0:
            raise ValueError("side must be positive")
        if abs(self.lean) > MAX_LEAN:
            raise ValueError(f"lean must be between -{MAX_LEAN} and {MAX_LEAN}")

    @classmethod
    def centred(cls, width: int, height: int) -> Placement:
        """The default: the frame's shorter side, at the bottom centre (a portrait's framing)."""
        side = float(min(width, height))
        return cls(left=(width - side) / 2.0, top=float(height - side), side=side)

    @classmethod
    def around_head(
        cls, *, centre_x: float, head_top: float, head_width: float, lean: float = 0.0
    ) -> Placement:
        """The box whose template head is ``head_width`` pixels wide, centred on ``centre_x``,
        its top at ``head_top``."""
        side = head_width / HEAD_WIDTH
        return cls(left=centre_x - side / 2.0, top=head_top - HEAD_TOP * side, side=side, lean=lean)

    def key(self, width: int, height: int) -> tuple[int, int, int, int]:
        """The box in 1/1024ths of the frame (left and side across, top down) and the lean in
        1/1024ths of the side: the cache key."""
        steps = PLACEMENT_STEPS
        return (
            round(self.left / width * steps),
            round(self.top / height * steps),
            max(1, round(self.side / min(width, height) * steps)),
            round(self.lean * steps),
        )


def coverage(
    width: int,
    height: int,
    cols: int,
    rows: int,
    extra_rows: int,
    box: tuple[float, float, float] | None = None,
    extra_cols: tuple[int, int] = (0, 0),
    lean: float = 0.0,
) -> FloatArray:
    """Fraction of each low-resolution cell inside the head-and-shoulders outline.

    ``box`` is (left, top, side) in the units of ``width`` and ``height``; None is
    :meth:`Placement.centred`. ``extra_cols`` widens the grid left and right of the frame;
    ``lean`` moves the torso across, in sides.
    Cells are supersampled so the outline is known to a fraction of a cell: the Poisson field
    then follows the smooth outline, not the grid's staircase.
    """
    if box is None:
        side = float(min(width, height))
        x0 = (width - side) / 2.0
        y0 = height - side
    else:
        x0, y0, side = box
    sub = _SUPERSAMPLE
    left, right = extra_cols
    first = -left * sub
    xs = (np.arange(first, (cols + right) * sub, dtype=np.float64) + 0.5) * (width / (cols * sub))
    ys = (np.arange((rows + extra_rows) * sub, dtype=np.float64) + 0.5) * (height / (rows * sub))
    u = ((xs - x0) / side)[np.newaxis, :]
    v = ((ys - y0) / side)[:, np.newaxis]
    du = np.abs(u - 0.5)
    head = (du / 0.165) ** 2 + ((v - 0.36) / 0.215) ** 2 <= 1.0
    neck = (du <= 0.085) & (v >= 0.45) & (v <= 0.82)
    top = np.where(v < 1.05, np.abs((v - 1.05) / 0.33), 0.0)
    torso_du = du if lean == 0.0 else np.abs(u - 0.5 - lean)
    torso = (torso_du / TORSO_HALF_WIDTH) ** 2.5 + top**2.5 <= 1.0
    inside = (head | neck | torso).astype(np.float32)
    cells = inside.reshape(rows + extra_rows, sub, cols + left + right, sub).mean(axis=(1, 3))
    out: FloatArray = cells.astype(np.float32)
    return out


def overhang(
    box: tuple[float, float, float], lean: float, width: int, cols: int
) -> tuple[int, int]:
    """Grid columns to add left and right so that a torso running past a side of the frame
    ends outside the grid's view (at most half the frame's width on each side)."""
    left, _top, side = box
    centre = left + (0.5 + lean) * side
    reach = TORSO_HALF_WIDTH * side
    cell = width / cols
    limit = cols // 2

    def columns(beyond: float) -> int:
        return 0 if beyond <= 0 else min(limit, math.ceil(beyond / cell) + 2)

    return columns(reach - centre), columns(centre + reach - width)
