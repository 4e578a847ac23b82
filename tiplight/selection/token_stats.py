"""Per-token statistics that selectors rank, and the paper's scope-wide normalisation (TIP §6)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tiplight.padding import pad_right

ENTROPY_CLIP_QUANTILE = 0.98  # TIP §6: "clip the top 2% of entropy values within each batch"


@dataclass(frozen=True, eq=False)  # eq=False: tensor equality is elementwise, not a bool
class TokenStats:
    """Statistics of one scope (usually the whole step's rollout batch), all tensors `[R, C]`.

    - `entropy`: student entropy divided by log|V|, h_t in [0, 1] (TIP Eq. 2).
    - `rkl`: KL(P_S || P_T) in nats, the paper's divergence delta_t (Eq. 3) and the loss itself.
    - `fkl`: KL(P_T || P_S) in nats, ranked by the Q3-only rule (§7.3).
    - `valid`: bool, True at the rollout's generated tokens. Raw values elsewhere may be garbage.
    - `entropy_hat`, `rkl_hat`: the normalised axes in [0, 1]; 0 at invalid positions.

    Build it with `TokenStats.from_raw`, which computes the two normalised axes.
    """

    entropy: Tensor
    rkl: Tensor
    fkl: Tensor
    valid: Tensor
    entropy_hat: Tensor
    rkl_hat: Tensor

    def __post_init__(self) -> None:
        shape = self.valid.shape
        if self.valid.dim() != 2 or self.valid.dtype != torch.bool:
            raise ValueError(
                f"TokenStats.valid must be a bool tensor [R, C]; got {self.valid.dtype} {tuple(shape)}."
            )
        for name in ("entropy", "rkl", "fkl", "entropy_hat", "rkl_hat"):
            if getattr(self, name).shape != shape:
                raise ValueError(
                    f"TokenStats.{name} has shape {tuple(getattr(self, name).shape)}; "
                    f"every field must match valid's shape {tuple(shape)}."
                )

    @classmethod
    @torch.no_grad()
    def from_raw(cls, entropy: Tensor, rkl: Tensor, fkl: Tensor, valid: Tensor) -> TokenStats:
        """Normalise over all valid tokens given; pass the whole scope (e.g. the gathered global batch).

        Args: `[R, C]` tensors; `valid` may be any dtype (nonzero = valid). Values are stored as float32.
        """
        valid = valid.bool()
        entropy, rkl, fkl = (x.float() for x in (entropy, rkl, fkl))
        entropy_hat = min_max(entropy.clamp(max=quantile(entropy, valid, ENTROPY_CLIP_QUANTILE)), valid)
        return cls(entropy, rkl, fkl, valid, entropy_hat, min_max(rkl, valid))

    @classmethod
    def cat(cls, parts: list[TokenStats]) -> TokenStats:
        """Rollouts of several scopes in one ``[sum R, max C]`` (fields right-padded with 0 / False)."""
        width = max(p.valid.shape[1] for p in parts)
        return cls(**{f: torch.cat([pad_right(getattr(p, f), width) for p in parts]) for f in _FIELDS})

    def rows(self, rows: slice, width: int) -> TokenStats:
        """Rollouts ``rows``, cut or right-padded to ``width`` completion positions."""
        return TokenStats(**{f: pad_right(getattr(self, f)[rows, :width], width) for f in _FIELDS})


_FIELDS = ("entropy", "rkl", "fkl", "valid", "entropy_hat", "rkl_hat")


def quantile(x: Tensor, valid: Tensor, q: float) -> Tensor:
    """q-quantile of `x` `[R, C]` over `valid` positions, linear interpolation as `torch.quantile`.

    `kthvalue` on the whole tensor with +inf at invalid positions: no boolean-index copy, and no
    2**24-element limit (`torch.quantile` refuses a large gathered batch). Returns a 0-dim tensor;
    +inf when nothing is valid, so clamping with it is a no-op.
    """
    n = int(valid.sum())
    if n == 0:
        return x.new_tensor(float("inf"))
    values = torch.where(valid, x, float("inf")).flatten()  # [R*C]; the n smallest are the valid ones
    pos = q * (n - 1)
    lo = int(pos)
    v_lo = values.kthvalue(lo + 1).values
    v_hi = values.kthvalue(min(lo + 2, n)).values if pos > lo else v_lo
    return v_lo + (pos - lo) * (v_hi - v_lo)


def min_max(x: Tensor, valid: Tensor) -> Tensor:
    """(x - min) / (max - min) over `valid` positions `[R, C]`; 0 where invalid or when max == min."""
    if not valid.any():
        return torch.zeros_like(x)
    lo = torch.where(valid, x, float("inf")).amin()
    hi = torch.where(valid, x, float("-inf")).amax()
    span = hi - lo
    ok = valid & (span > 0)  # a constant scope carries no ranking information: zeros, never 0/0 = NaN
    return torch.where(ok, (x - lo) / torch.where(span > 0, span, 1.0), 0.0)
