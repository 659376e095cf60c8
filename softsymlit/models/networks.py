"""Jet networks mapping constituent four-momenta to class logits.

Every network here follows one contract, which the symmetry penalties and the analysis rely on:
``network(p4, mask) -> logits`` with ``p4: [B, N, 4]`` (E, px, py, pz) in GeV, ``mask: [B, N]``
bool and ``logits: [B, C]``. Features are computed inside the network from ``p4`` by a
:class:`~softsymlit.models.features.ConstituentFeatures` module, so a transformation of ``p4`` is
seen through correctly recomputed features.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from softsymlit.models.features import ConstituentFeatures

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


def _activation(name: str) -> type[nn.Module]:
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"activation {name!r} is not available; use one of: {', '.join(_ACTIVATIONS)}"
        ) from None


def mlp(
    in_features: int, hidden: Sequence[int], activation: str = "gelu", final_activation=True
) -> nn.Sequential:
    """A stack of ``Linear`` layers with ``activation`` between them (and after the last one
    when ``final_activation``)."""
    layers: list[nn.Module] = []
    width = in_features
    for i, out in enumerate(hidden):
        layers.append(nn.Linear(width, out))
        if final_activation or i < len(hidden) - 1:
            layers.append(_activation(activation)())
        width = out
    return nn.Sequential(*layers)


class ParticleFlowNetwork(nn.Module):
    """Particle Flow Network: ``F(Σ_i Φ(x_i))`` with a per-constituent MLP Φ and a jet MLP F.

    The sum runs over unmasked constituents only, so padded slots never change the output.
    Smooth activations (GELU by default) keep curvature and Lie derivatives defined everywhere.

    Args:
        num_classes: number of output logits.
        phi_sizes: widths of the per-constituent MLP; the last one is the latent dimension.
        f_sizes: widths of the jet-level MLP before the output layer.
        activation: one of ``relu``, ``gelu``, ``silu``, ``tanh``.
        features: the feature module (default :class:`ConstituentFeatures`).

    Example::

        net = ParticleFlowNetwork(num_classes=2)
        logits = net(p4, mask)  # [B, 2]
    """

    def __init__(
        self,
        num_classes: int = 2,
        phi_sizes: Sequence[int] = (100, 100, 128),
        f_sizes: Sequence[int] = (100, 100, 100),
        activation: str = "gelu",
        features: ConstituentFeatures | None = None,
    ) -> None:
        super().__init__()
        self.features = features if features is not None else ConstituentFeatures()
        self.phi = mlp(self.features.num_features, phi_sizes, activation)
        self.f = mlp(phi_sizes[-1], f_sizes, activation)
        self.head = nn.Linear(f_sizes[-1] if f_sizes else phi_sizes[-1], num_classes)
        self.num_classes = num_classes

    def forward(self, p4: Tensor, mask: Tensor) -> Tensor:
        per_particle = self.phi(self.features(p4, mask))
        latent = (per_particle * mask.unsqueeze(-1).to(per_particle.dtype)).sum(dim=1)
        return self.head(self.f(latent))


class _EncoderBlock(nn.Module):
    """Pre-norm transformer block; attention goes through ``scaled_dot_product_attention`` so the
    caller can pick its kernel (the math kernel supports double backward and forward-mode AD)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, int(dim * mlp_ratio)),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(int(dim * mlp_ratio), dim),
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        batch, length, dim = x.shape
        qkv = self.qkv(self.norm1(x)).view(batch, length, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        x = x + self.dropout(self.proj(attended.transpose(1, 2).reshape(batch, length, dim)))
        return x + self.dropout(self.mlp(self.norm2(x)))


class ParticleTransformer(nn.Module):
    """A small transformer encoder over constituents with masked attention and masked mean pooling.

    Padded constituents are excluded as attention keys and from the pooling, so they never change
    the output. Curvature and Lie-derivative passes on CPU must run under
    ``torch.nn.attention.sdpa_kernel(SDPBackend.MATH)``.

    Args:
        num_classes: number of output logits.
        embed_dim: width of the token embedding.
        num_heads: attention heads per block.
        num_layers: number of encoder blocks.
        mlp_ratio: hidden width of each block's MLP relative to ``embed_dim``.
        dropout: dropout probability inside the blocks.
        features: the feature module (default :class:`ConstituentFeatures`).
    """

    def __init__(
        self,
        num_classes: int = 2,
        embed_dim: int = 64,
        num_heads: int = 4,
        num_layers: int = 3,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        features: ConstituentFeatures | None = None,
    ) -> None:
        super().__init__()
        self.features = features if features is not None else ConstituentFeatures()
        self.embed = mlp(self.features.num_features, (embed_dim, embed_dim), "gelu")
        self.blocks = nn.ModuleList(
            _EncoderBlock(embed_dim, num_heads, mlp_ratio, dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        self.num_classes = num_classes

    def forward(self, p4: Tensor, mask: Tensor) -> Tensor:
        x = self.embed(self.features(p4, mask))
        attn_mask = mask[:, None, None, :]
        for block in self.blocks:
            x = block(x, attn_mask)
        weights = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
        return self.head(self.norm(pooled))


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = ["ParticleFlowNetwork", "ParticleTransformer", "count_parameters", "mlp"]
