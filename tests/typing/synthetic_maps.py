"""Type-checked use of synthetic maps and the emulator's placement (never executed)."""

from __future__ import annotations

from PIL import Image

import clipnormals
from clipnormals.emulator import Placement, fit_placement, synthetic_jpeg, synthetic_normal_map


def typed_synthetic(jpeg: bytes, photo: Image.Image) -> Image.Image:
    nm = clipnormals.NormalMap(jpeg, synthetic=True)
    known: bool = nm.synthetic
    del known
    return clipnormals.contact_sheet([(photo, nm)], names=["portrait"])


def typed_placement(photo: bytes) -> bytes:
    placement: Placement | None = fit_placement(photo)
    if placement is None:
        placement = Placement.centred(640, 480)
    centred = Placement.around_head(centre_x=320.0, head_top=40.0, head_width=120.0, lean=0.1)
    side: float = centred.side
    del side
    synthetic_normal_map(640, 480, placement=placement)
    return synthetic_jpeg(640, 480, quality=90, placement=placement)


def typed_placement_mistakes() -> None:
    Placement(0.0, 0.0)  # type: ignore[call-arg]
    Placement.around_head(320.0, 40.0, 120.0)  # type: ignore[call-arg]
