"""Sentinel-2 cloud and shadow masks: Sen2Cor scene classes (SCL), dilation, mask functions.

:func:`scl_valid` is the reference mask of the readers; :class:`SCLMask` computes the
same mask faster and is the default of :func:`latentcube.cube.build.build_cube`, which
takes any :class:`MaskFunction`, or a name (:data:`MASK_NAMES`,
:func:`latentcube.cube.build.make_mask`):
``"scl"``, ``"csmask"`` (the learned mask of :mod:`latentcube.cube.csmask`, extra
``[cloudmask]``) or ``"scl+csmask"`` (clear only where both say clear,
:class:`AllMasks`). :func:`mask_provenance` and :func:`describe_mask` give what a
cube records about its mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
from scipy import ndimage

__all__ = [
    "MASK_NAMES",
    "SCL_INVALID",
    "AllMasks",
    "MaskFunction",
    "SCLMask",
    "describe_cube_mask",
    "describe_mask",
    "dilate_square",
    "mask_provenance",
    "scl_valid",
]

#: Masks a build can name (CLI ``--mask``, :class:`~latentcube.cube.plan.CubeSpec` ``mask``).
MASK_NAMES: tuple[str, ...] = ("scl", "csmask", "scl+csmask")

#: Sen2Cor classes masked by default: no data, saturated, cloud shadow, cloud
#: medium/high probability, thin cirrus, snow/ice.
SCL_INVALID: tuple[int, ...] = (0, 1, 3, 8, 9, 10, 11)


def scl_valid(
    scl: np.ndarray, *, invalid_classes: Sequence[int] = SCL_INVALID, dilation: int = 0
) -> np.ndarray:
    """Clear-sky mask from the Sen2Cor scene classification.

    Parameters
    ----------
    scl
        (..., y, x) integer SCL codes.
    invalid_classes
        Codes treated as not clear.
    dilation
        Grow the invalid area by this many pixels (square structuring element)
        in every 2-D slice, to catch cloud edges the classifier misses.

    Returns
    -------
    numpy.ndarray
        bool, True where clear.
    """
    scl = np.asarray(scl)
    invalid = np.isin(scl, np.asarray(invalid_classes))
    if dilation > 0:
        structure = np.zeros((1,) * (scl.ndim - 2) + (2 * dilation + 1,) * 2, bool)
        structure[(0,) * (scl.ndim - 2)] = True
        invalid = ndimage.binary_dilation(invalid, structure=structure)
    return ~invalid


class MaskFunction(Protocol):
    """A cloud/shadow masker for Sentinel-2.

    Called once per S2 item and loading unit with the reflectance
    ``refl`` (item, band, y, x; float32 in [0, 1], NaN for no data), the SCL
    codes ``scl`` (item, y, x; uint8, 0 for no data) and the band names; returns
    a bool array (item, y, x), True where the pixel is clear. An optional
    ``halo`` attribute (pixels) asks for that much context around every tile
    (e.g. for a dilation), so results do not depend on the tiling.

    Optional members a build uses when present: ``unclipped`` (True: ``refl`` is
    not clipped at 1, so bright clouds keep their values; the cube is clipped
    after masking), ``check(bands)`` (raise before
    anything is read if the mask cannot run on these bands), ``screen`` (an
    :class:`SCLMask` whose clear pixels include this mask's, to drop dates from
    SCL alone), ``by_date(refl, scl, bands, groups)`` (the mask with the items
    grouped by date), ``describe()`` (one line of identity) and
    ``provenance()`` (a JSON-able dict stored in the cube's ``mask`` attribute).
    """

    def __call__(self, refl: np.ndarray, scl: np.ndarray, bands: Sequence[str]) -> np.ndarray:
        """Clear-sky mask (item, y, x)."""
        ...


@dataclass(frozen=True)
class SCLMask:
    """The default mask: Sen2Cor scene classes, clouds and shadows dilated.

    Parameters
    ----------
    invalid_classes
        SCL codes treated as not clear (default: no data, saturated, cloud
        shadow, cloud medium/high, cirrus, snow).
    dilation
        Grow the area of ``dilate_classes`` by this many 10 m pixels, to
        catch cloud edges and thin shadows the classifier misses.
    dilate_classes
        Codes that are dilated (default: cloud shadow, cloud medium/high,
        cirrus). No data is never dilated, so tile edges do not eat into
        valid pixels.
    """

    invalid_classes: tuple[int, ...] = SCL_INVALID
    dilation: int = 1
    dilate_classes: tuple[int, ...] = (3, 8, 9, 10)

    #: Items are independent: a combined mask may call it on a subset of items.
    per_item: ClassVar[bool] = True

    @property
    def name(self) -> str:
        """Short name: ``scl``."""
        return "scl"

    @property
    def halo(self) -> int:
        """Context needed around a tile: the dilation."""
        return int(self.dilation)

    def describe(self) -> str:
        """One line of identity (part of a build's fingerprint; unchanged since 0.1)."""
        extra = ""
        if self.dilate_classes != (3, 8, 9, 10):
            extra = f", dilate={list(self.dilate_classes)}"
        return (
            f"{type(self).__qualname__}(invalid={list(self.invalid_classes)}, "
            f"dilation={self.dilation}{extra})"
        )

    def provenance(self) -> dict[str, Any]:
        """Name and options."""
        return {
            "name": self.name,
            "invalid_classes": [int(c) for c in self.invalid_classes],
            "dilation": int(self.dilation),
            "dilate_classes": [int(c) for c in self.dilate_classes],
        }

    def __call__(self, refl: np.ndarray, scl: np.ndarray, bands: Sequence[str]) -> np.ndarray:
        """Clear where the SCL class is not invalid and no dilated cloud/shadow reaches."""
        return self.clear(scl)

    def clear(self, scl: np.ndarray) -> np.ndarray:
        """The mask from the SCL codes alone (item, y, x).

        Same result as :func:`scl_valid` (tested
        against it), computed with a lookup table per class set and a separable
        square dilation for the usual uint8 codes.
        """
        scl = np.asarray(scl)
        if scl.dtype != np.uint8:
            valid = scl_valid(scl, invalid_classes=self.invalid_classes)
            if self.dilation > 0:
                valid &= scl_valid(scl, invalid_classes=self.dilate_classes, dilation=self.dilation)
            return valid
        lut = np.zeros(256, np.uint8)  # bit 0: invalid, bit 1: dilated
        lut[[c for c in self.invalid_classes if 0 <= c < 256]] |= 1
        if self.dilation > 0:
            lut[[c for c in self.dilate_classes if 0 <= c < 256]] |= 2
        codes = lut[scl]
        invalid = (codes & 1).astype(bool)
        if self.dilation > 0:
            invalid |= dilate_square((codes & 2).astype(bool), self.dilation)
        return ~invalid


def dilate_square(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation of every 2-D slice by a (2r+1) x (2r+1) square; outside is False.

    Separable: a dilation along x then along y, each by shifted ORs; equals
    :func:`scipy.ndimage.binary_dilation` with that structuring element.
    """
    out = mask.copy()
    for axis in (-1, -2):
        src = out.copy()
        for s in range(1, min(r, src.shape[axis] - 1) + 1):
            lo = [slice(None)] * src.ndim
            hi = [slice(None)] * src.ndim
            lo[axis], hi[axis] = slice(s, None), slice(None, -s)
            out[tuple(lo)] |= src[tuple(hi)]
            out[tuple(hi)] |= src[tuple(lo)]
    return out


_dilate_square = dilate_square  # the name before 2026-12-07


@dataclass(frozen=True)
class AllMasks:
    """Clear only where every mask says clear (e.g. SCL and the learned mask).

    Parameters
    ----------
    masks
        Mask functions, applied in order; a mask marked ``per_item`` runs only on
        the items (or, with ``by_date``, the dates) the earlier masks left some
        clear pixel in, so a cheap first mask saves work of an expensive later one.
    """

    masks: tuple[Any, ...]

    per_item: ClassVar[bool] = True

    @property
    def name(self) -> str:
        """The members' names joined by ``+`` (``scl+csmask``)."""
        return "+".join(str(getattr(m, "name", _qualname(m))) for m in self.masks)

    @property
    def unclipped(self) -> bool:
        """Whether a member wants reflectance above 1 as it is (the learned mask)."""
        return any(getattr(m, "unclipped", False) for m in self.masks)

    @property
    def halo(self) -> int:
        """The largest halo of the members."""
        return max((int(getattr(m, "halo", 0)) for m in self.masks), default=0)

    @property
    def screen(self) -> SCLMask | None:
        """A member's SCL mask (or screen): its clear pixels include the combination's."""
        for m in self.masks:
            if type(m) is SCLMask:
                return m
        return next((m.screen for m in self.masks if getattr(m, "screen", None)), None)

    def check(self, bands: Sequence[str]) -> None:
        """Every member's check."""
        for m in self.masks:
            if hasattr(m, "check"):
                m.check(bands)

    def describe(self) -> str:
        """The members' descriptions joined by `` & ``."""
        return " & ".join(describe_mask(m) for m in self.masks)

    def provenance(self) -> dict[str, Any]:
        """Name and each member's provenance."""
        return {"name": self.name, "masks": [mask_provenance(m) for m in self.masks]}

    def __call__(self, refl: np.ndarray, scl: np.ndarray, bands: Sequence[str]) -> np.ndarray:
        """Clear where every member says clear (item, y, x)."""
        return self.by_date(refl, scl, bands, [[k] for k in range(refl.shape[0])])

    def by_date(
        self,
        refl: np.ndarray,
        scl: np.ndarray,
        bands: Sequence[str],
        groups: Sequence[Sequence[int]],
    ) -> np.ndarray:
        """Clear where every member says clear, members with ``by_date`` given the dates."""
        clear = np.ones((refl.shape[0], *refl.shape[2:]), bool)
        for n, m in enumerate(self.masks):
            if n and hasattr(m, "by_date"):
                clear &= m.by_date(refl, scl, bands, groups, need=clear)
                continue
            if n and getattr(m, "per_item", False):
                rows = np.flatnonzero(clear.any(axis=(1, 2)))
                if len(rows) < refl.shape[0]:
                    part = np.zeros_like(clear)
                    if len(rows):
                        part[rows] = np.asarray(m(refl[rows], scl[rows], bands), bool)
                    clear &= part
                    continue
            by_date = getattr(m, "by_date", None)
            got = by_date(refl, scl, bands, groups) if by_date else m(refl, scl, bands)
            clear &= np.asarray(got, bool)
        return clear


def _qualname(mask: Any) -> str:
    return str(getattr(mask, "__qualname__", type(mask).__qualname__))


def describe_mask(mask: Any) -> str:
    """One line naming a mask function: its ``describe()``, else its (qualified) name."""
    describe = getattr(mask, "describe", None)
    return str(describe()) if callable(describe) else _qualname(mask)


def mask_provenance(mask: Any) -> dict[str, Any]:
    """What a cube records about its mask: ``provenance()``, else the function's name."""
    prov = getattr(mask, "provenance", None)
    if callable(prov):
        return dict(prov())
    return {"name": _qualname(mask), "module": str(getattr(mask, "__module__", ""))}


def _one_line(info: dict[str, Any]) -> str:
    name = str(info.get("name", "?"))
    if "masks" in info:
        return f"{name}: " + " & ".join(_one_line(m) for m in info["masks"])
    if name == "scl" and "invalid_classes" in info:
        classes = ", ".join(str(c) for c in info["invalid_classes"])
        return f"scl (SCL classes {classes} masked; dilation {info.get('dilation', 0)} px)"
    if "model_sha256" in info:
        return (
            f"{name} ({info.get('package', '?')} {info.get('package_version', '?')}, "
            f"{info.get('model_file', '?')} sha256 {info['model_sha256']}, "
            f"bands {', '.join(info.get('bands', []))} at {info.get('scale', 1)}x"
            f"{info.get('scale', 1)} px; dilation {info.get('dilation', 0)} px)"
        )
    return f"{name} (a mask function)"


def describe_cube_mask(attrs: dict[str, Any]) -> str:
    """One line saying which mask made a cube, from its attributes.

    Reads the ``mask`` attribute (JSON, written by
    :func:`~latentcube.cube.build.build_cube`), else ``mask_function`` or a
    reader's ``s2_mask``; ``"not recorded"`` when none is there.
    """
    import json

    raw = attrs.get("mask")
    if raw:
        try:
            info = json.loads(raw) if isinstance(raw, str) else dict(raw)
        except (ValueError, TypeError):
            return str(raw)
        return _one_line(info)
    for key in ("mask_function", "s2_mask"):
        if attrs.get(key):
            return str(attrs[key])
    return "not recorded"
