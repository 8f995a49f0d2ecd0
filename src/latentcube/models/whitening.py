"""A fixed linear whitening of a model's output: decorrelated, unit-variance embeddings.

An autoencoder's latent dimensions come out strongly correlated (|r| up to
0.86-0.90, and above 0.5 for 10-11 of the 21 pairs, for the 7-d land-cover models
of docs/evaluation.md), so Euclidean distances, and
everything built on them (k-NN, clustering, similarity search), count the
dominant direction several times over. :class:`Whitening` is an invertible
affine map fitted once, without labels, on a model's training windows:

    e = (z - mean) @ matrix.T        z = e @ inverse.T + mean

``matrix`` rotates ``z`` onto its principal axes (largest variance first) and
scales every axis to unit variance (PCA whitening). Encoders apply it to their
output and decoders undo it first, so reconstructions are unchanged up to float
rounding and any linear probe sees the same information. Until fitted it is the
identity and costs nothing, so models trained without it keep their outputs
bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["Whitening", "fit_on_outputs"]


class Whitening(nn.Module):
    """Fixed affine whitening of ``dim``-dimensional vectors (identity until fitted).

    Parameters
    ----------
    dim
        Size of the vectors.
    """

    fitted: Tensor
    mean: Tensor
    matrix: Tensor
    inverse: Tensor
    variance: Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("matrix", torch.eye(dim))
        self.register_buffer("inverse", torch.eye(dim))
        self.register_buffer("variance", torch.ones(dim))

    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit_` has set the transform (else the identity)."""
        return bool(self.fitted)

    def forward(self, z: Tensor) -> Tensor:
        """Whitened ``z`` (..., dim)."""
        if not self.is_fitted:
            return z
        return (z - self.mean) @ self.matrix.T

    def inverse_transform(self, e: Tensor) -> Tensor:
        """The vectors ``z`` (..., dim) whose whitened values are ``e``."""
        if not self.is_fitted:
            return e
        return e @ self.inverse.T + self.mean

    @torch.no_grad()
    def fit_(self, samples: Tensor, rel_eps: float = 1e-6) -> Whitening:
        """Fit the transform in place on ``samples`` (N, dim) and return ``self``.

        Eigenvalues below ``rel_eps`` times the largest are raised to it, so a
        dimension without variance is not blown up.

        Raises
        ------
        ValueError
            If ``samples`` has the wrong width, fewer than ``dim + 1`` rows, or
            non-finite values.
        """
        dim = self.mean.numel()
        if samples.dim() != 2 or samples.shape[1] != dim:
            raise ValueError(f"whitening samples must be (N, {dim}), got {tuple(samples.shape)}")
        if samples.shape[0] <= dim:
            raise ValueError(
                f"whitening needs more than {dim} samples to estimate a {dim} x {dim} "
                f"covariance, got {samples.shape[0]}"
            )
        if not torch.isfinite(samples).all():
            raise ValueError("whitening samples contain NaN or infinite values")
        x = samples.to(torch.float64)
        mean = x.mean(dim=0)
        cov = torch.cov((x - mean).T).reshape(dim, dim)
        val, vec = torch.linalg.eigh(cov)
        val, vec = val.flip(0), vec.flip(1)  # largest variance first
        # a fixed sign per axis: the largest loading of each eigenvector positive
        sign = torch.sign(vec.gather(0, vec.abs().argmax(0, keepdim=True))).squeeze(0)
        vec = vec * torch.where(sign == 0, torch.ones_like(sign), sign)
        val = val.clamp(min=float(val[0]) * rel_eps)
        self.mean.copy_(mean.to(self.mean.dtype))
        self.matrix.copy_((vec / val.sqrt()).T.to(self.matrix.dtype))
        self.inverse.copy_((vec * val.sqrt()).to(self.inverse.dtype))
        self.variance.copy_(val.to(self.variance.dtype))
        self.fitted.fill_(True)
        return self

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Load as usual, but keep the identity when the state has none of the buffers.

        Files written before the buffers existed load unchanged; a state with
        only some of them still fails.
        """
        if not any(prefix + name in state_dict for name in self._buffers):
            return
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        """Size and state, for ``repr``."""
        return f"dim={self.mean.numel()}, fitted={self.is_fitted}"


@torch.no_grad()
def fit_on_outputs(
    whitening: Whitening,
    n: int,
    outputs: Callable[[np.ndarray], Tensor],
    *,
    max_windows: int,
    seed: int,
    batch_size: int,
    what: str = "windows",
) -> Whitening:
    """Fit ``whitening`` on a model's unwhitened outputs for at most ``max_windows`` of ``n``.

    The windows are a seeded draw (all of them when there are few enough);
    ``outputs(idx)`` returns the rows to fit on for the window indices ``idx``,
    computed while ``whitening`` is switched off. If anything fails, the
    whitening is left as it was.

    Raises
    ------
    ValueError
        If there is no row to fit on (``what`` names what was missing), or as
        :meth:`Whitening.fit_`.
    """
    idx = np.arange(n)
    if n > max_windows:
        idx = np.sort(np.random.default_rng(seed).choice(n, max_windows, replace=False))
    was = whitening.is_fitted
    whitening.fitted.fill_(False)
    try:
        parts = [outputs(idx[i : i + batch_size]) for i in range(0, len(idx), batch_size)]
        rows = torch.cat(parts) if parts else torch.zeros(0, whitening.mean.numel())
        if len(rows) == 0:
            raise ValueError(f"no {what} to fit the whitening on")
        return whitening.fit_(rows)
    except BaseException:
        whitening.fitted.fill_(was)
        raise
