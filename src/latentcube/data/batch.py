"""A batch of one sensor's context windows as tensors: :class:`SensorBatch`.

The unit the fusion model and its training exchange per sensor; built from
windows by :meth:`latentcube.data.multisensor.FusionWindows.tensors`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

__all__ = ["SensorBatch"]


@dataclass
class SensorBatch:
    """Context windows of one sensor.

    Attributes
    ----------
    x
        (B, T, C, W, W) values, anything where ``mask`` is False.
    mask
        (B, T, W, W) bool validity.
    gaps
        (B, T-1) day gaps between consecutive dates.
    offset
        (B,) days between this sensor's acquisition at the centre date and the
        reference date (0 for the reference sensor).
    """

    x: Tensor
    mask: Tensor
    gaps: Tensor
    offset: Tensor

    FIELDS: ClassVar[tuple[str, ...]] = ("x", "mask", "gaps", "offset")

    def centre_valid(self) -> Tensor:
        """(B,) whether the centre pixel is valid at the centre date."""
        t, w = self.mask.shape[1] // 2, self.mask.shape[-1] // 2
        return self.mask[:, t, w, w]

    def centre_only(self) -> SensorBatch:
        """The centre pixel at the centre date as a 1-date, 1 x 1 px window.

        Enough for the ``"centre"`` objective once the latents are known (the
        decoder needs only the day gaps): a fraction of the memory and of the
        loading cost of the whole window.
        """
        t, w = self.mask.shape[1] // 2, self.mask.shape[-1] // 2
        return SensorBatch(
            self.x[:, t : t + 1, :, w : w + 1, w : w + 1],
            self.mask[:, t : t + 1, w : w + 1, w : w + 1],
            self.gaps,
            self.offset,
        )

    def take(self, idx: Tensor | np.ndarray) -> SensorBatch:
        """The samples ``idx``."""
        i = torch.as_tensor(idx)
        return SensorBatch(self.x[i], self.mask[i], self.gaps[i], self.offset[i])
