"""Building blocks of the autoencoders: attention CNN blocks of the paper, positional encodings."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CBAM",
    "ConvAttentionBlock",
    "MultiScaleAttentionBlock",
    "ResidualPool",
    "encoder_inference",
    "sinusoidal_encoding",
    "transformer_stack",
]


class CBAM(nn.Module):
    """Convolutional block attention: channel attention, then spatial attention."""

    def __init__(self, channels: int, reduction: int = 8, spatial_kernel: int = 7) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, channels, 1)
        )
        self.spatial = nn.Conv2d(2, 1, spatial_kernel, padding=spatial_kernel // 2)

    def forward(self, x: Tensor) -> Tensor:
        """Apply channel then spatial attention to ``x`` (N, C, H, W)."""
        ca = self.mlp(x.mean((2, 3), keepdim=True)) + self.mlp(x.amax((2, 3), keepdim=True))
        x = x * torch.sigmoid(ca)
        sa = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(sa))


class ConvAttentionBlock(nn.Module):
    """3 x 3 convolution + LeakyReLU(0.01) + CBAM."""

    def __init__(self, cin: int, cout: int, reduction: int = 8, spatial_kernel: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.act = nn.LeakyReLU(0.01)
        self.cbam = CBAM(cout, reduction, spatial_kernel)

    def forward(self, x: Tensor) -> Tensor:
        """Convolve and attend."""
        return self.cbam(self.act(self.conv(x)))


class MultiScaleAttentionBlock(nn.Module):
    """Parallel 3 x 3 and 7 x 7 convolutions, 1 x 1 fusion, CBAM."""

    def __init__(self, cin: int, cout: int, kernels: tuple[int, ...] = (3, 7)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2), nn.LeakyReLU(0.1))
            for k in kernels
        )
        self.fuse = nn.Sequential(nn.Conv2d(cout * len(kernels), cout, 1), nn.LeakyReLU(0.01))
        self.cbam = CBAM(cout, 8, 7)

    def forward(self, x: Tensor) -> Tensor:
        """Multi-scale convolution, fusion and attention."""
        return self.cbam(self.fuse(torch.cat([b(x) for b in self.branches], dim=1)))


class ResidualPool(nn.Module):
    """``x + maxpool3x3_stride1(block(x))`` as in the paper's reducer and upscaler."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block
        self.pool = nn.MaxPool2d(3, stride=1, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """Residual connection around block and pooling."""
        return x + self.pool(self.block(x))


def sinusoidal_encoding(offsets: Tensor, dim: int, max_period: float = 1000.0) -> Tensor:
    """Sinusoidal encoding of day offsets.

    Parameters
    ----------
    offsets
        (...,) day offsets (float or int).
    dim
        Even output size.
    max_period
        Longest period in days.

    Returns
    -------
    torch.Tensor
        (..., dim) float32.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period)
        * torch.arange(half, dtype=torch.float32, device=offsets.device)
        / max(half - 1, 1)
    )
    ang = offsets.to(torch.float32)[..., None] * freqs * (2 * math.pi)
    enc = torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1)
    if dim % 2:
        enc = torch.cat([enc, torch.zeros_like(enc[..., :1])], dim=-1)
    return enc


def transformer_stack(
    d_model: int,
    n_heads: int,
    ff_dim: int,
    dropout: float,
    n_layers: int,
    *,
    activation: str,
    norm_first: bool,
) -> nn.TransformerEncoder:
    """A batch-first ``nn.TransformerEncoder`` of ``n_layers`` identical layers.

    Parameters
    ----------
    d_model, n_heads, ff_dim, dropout
        Width, attention heads, feed-forward width and dropout of every layer.
    n_layers
        Number of layers.
    activation
        ``"relu"`` or ``"gelu"``.
    norm_first
        Pre-norm (True) or post-norm (False) layers.

    Returns
    -------
    torch.nn.TransformerEncoder
        Without the nested-tensor fast path, so padded and unpadded batches run
        the same arithmetic.
    """
    layer = nn.TransformerEncoderLayer(
        d_model,
        n_heads,
        ff_dim,
        dropout,
        activation=activation,
        batch_first=True,
        norm_first=norm_first,
    )
    return nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)


def encoder_inference(stack: nn.TransformerEncoder, x: Tensor, query: int | None = None) -> Tensor:
    """Inference forward of a batch-first, pre-norm ``nn.TransformerEncoder`` (no dropout).

    The same arithmetic as the module in eval mode, written out so that the
    attention softmax over the short date axis (11 tokens) is a few vectorised
    element-wise operations; ``torch.softmax`` over rows of 11 values is several
    times slower on CPU and dominated dense inference. Tested against the module.
    Plain tensor operations, so autograd works through it too (frozen decoders
    in fusion training).

    Parameters
    ----------
    stack
        Encoder whose layers have ``batch_first=True`` and ``norm_first=True``.
    x
        (B, T, d) tokens.
    query
        If given, only this token's output is computed: the last layer then
        projects queries, attention output and feed-forward for that token alone
        (keys and values still come from every token), the same values as
        ``stack(x)[:, query:query + 1]``.

    Returns
    -------
    torch.Tensor
        (B, T, d), as ``stack(x)`` in eval mode; (B, 1, d) with ``query``.
    """
    n = len(stack.layers)
    for i, layer in enumerate(stack.layers):
        attn = layer.self_attn
        if not (layer.norm_first and attn.batch_first):
            raise ValueError("encoder_inference needs batch_first, norm_first layers")
        b, t, d = x.shape
        heads = attn.num_heads
        y = layer.norm1(x)
        if query is not None and i == n - 1:
            w, bias = attn.in_proj_weight, attn.in_proj_bias
            q = F.linear(y[:, query : query + 1], w[:d], None if bias is None else bias[:d])
            q = q.view(b, 1, heads, d // heads).transpose(1, 2)
            kv = F.linear(y, w[d:], None if bias is None else bias[d:])
            k, v = kv.view(b, t, 2, heads, d // heads).permute(2, 0, 3, 1, 4)
            x = x[:, query : query + 1]
            t = 1
        else:
            qkv = F.linear(y, attn.in_proj_weight, attn.in_proj_bias)
            q, k, v = qkv.view(b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        s = torch.matmul(q * (d // heads) ** -0.5, k.transpose(-1, -2))  # (B, H, t, T)
        s = torch.exp(s - s.amax(dim=-1, keepdim=True))
        s = s / s.sum(dim=-1, keepdim=True)
        o = torch.matmul(s, v).transpose(1, 2).reshape(b, t, d)
        x = x + attn.out_proj(o)
        x = x + layer.linear2(layer.activation(layer.linear1(layer.norm2(x))))
    if stack.norm is not None:
        x = stack.norm(x)
    return x
