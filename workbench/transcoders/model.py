"""The transcoder itself: x (the MLP's input) → z (sparse features) → ŷ (the MLP's output).

Definitions: docs/methods.md#architecture-and-training.

z = ReLU(x W_enc + b_enc), then either an L1 penalty on z (`relu`, the paper's) or only the k largest
kept (`topk`, EleutherAI sparsify's); ŷ = z W_dec + b_dec (+ x W_skipᵀ with a skip connection).
Weights use SAE-Lens's layout, so saving in its format is a rename: W_enc [d_in, width], W_dec
[width, d_out], W_skip [d_out, d_in]. Decoder rows are kept at unit norm during training.

TopK's encoder and decoder only touch k features per token: a custom autograd function makes the
backward pass sparse too (the dense forward matmul is needed to find the top k). The gathers are
torch's `embedding_bag`, which is what sparse decoding amounts to.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from workbench.errors import WorkbenchError

ARCHITECTURES = ("relu", "topk")
ENCODER_INIT_NORM = 0.1  # each encoder column's norm in the random start (the data start fits a scale)
DEFAULT_L1 = 3e-3  # λ per unit of z measured in RMS ‖y‖ (train.py's loss), against a scale-free FVU


@dataclass
class TranscoderConfig:
    d_in: int
    d_out: int
    width: int
    arch: str = "topk"
    k: int | None = 32  # topk only
    l1: float | None = None  # relu only: λ of the L1 penalty
    skip: bool = False
    model: str = ""
    layer: int = 0
    hook_in: str = ""
    hook_out: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise WorkbenchError(f"Unknown transcoder architecture {self.arch!r}; use relu or topk.")
        if self.arch == "topk" and not (self.k and 0 < self.k <= self.width):
            raise WorkbenchError(f"A topk transcoder needs 0 < k <= width ({self.width}); got k={self.k}.")
        if self.arch == "relu":
            self.k = None
            self.l1 = DEFAULT_L1 if self.l1 is None else self.l1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TranscoderConfig:
        return cls(**data)


class Encoded(NamedTuple):
    values: torch.Tensor  # [T, k] for topk, [T, width] for relu
    indices: torch.Tensor | None  # [T, k] for topk, None for relu (dense)


class TranscoderOutput(NamedTuple):
    y_hat: torch.Tensor
    encoded: Encoded


class _SparseTopK(torch.autograd.Function):
    """(values, indices) = topk(ReLU(x W + b), k), with a backward that only touches the k chosen columns.

    With a `dead` mask it also returns, for the first `aux_rows` tokens, the top `k_aux` dead features
    (for the AuxK loss) from the same dense pre-activations: the auxiliary loss costs no second matmul.
    """

    @staticmethod
    def forward(ctx, x, w_enc, b_enc, k, dead=None, k_aux=0, aux_rows=0):
        pre = torch.addmm(b_enc, x, w_enc)
        values, indices = pre.topk(k, dim=-1, sorted=False)
        if dead is not None and k_aux > 0 and aux_rows > 0:
            dead_idx = dead.nonzero().squeeze(1)  # only the dead columns: cheaper than masking all of them
            aux_values, local = pre[:aux_rows, dead_idx].topk(k_aux, dim=-1, sorted=False)
            aux_indices = dead_idx[local]
        else:
            aux_values, aux_indices = pre.new_zeros(0, 0), indices.new_zeros(0, 0)
        values, aux_values = values.clamp_min(0), aux_values.clamp_min(0)
        ctx.save_for_backward(x, w_enc, values, indices, aux_values, aux_indices)
        return values, indices, aux_values, aux_indices

    @staticmethod
    def backward(ctx, grad_values, _grad_indices, grad_aux_values, _grad_aux_indices):
        x, w_enc, values, indices, aux_values, aux_indices = ctx.saved_tensors
        g = (grad_values * (values > 0)).flatten()  # ReLU
        rows = torch.arange(len(x)).repeat_interleave(indices.shape[1])
        cols = indices.flatten()
        if aux_values.numel():
            g = torch.cat([g, (grad_aux_values * (aux_values > 0)).flatten()])
            rows = torch.cat([rows, torch.arange(len(aux_values)).repeat_interleave(aux_indices.shape[1])])
            cols = torch.cat([cols, aux_indices.flatten()])
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.zeros_like(x).index_add_(0, rows, w_enc.T[cols] * g[:, None])
        if ctx.needs_input_grad[1]:  # Gᵀ x with G [T, width] holding a few entries per row: a sparse matmul
            size = (w_enc.shape[1], len(x))
            g_t = torch.sparse_coo_tensor(torch.stack([cols, rows]), g, size, check_invariants=False)
            grad_w = torch.sparse.mm(g_t.coalesce(), x).T
        if ctx.needs_input_grad[2]:
            grad_b = torch.bincount(cols, weights=g, minlength=w_enc.shape[1]).to(g.dtype)
        return grad_x, grad_w, grad_b, None, None, None, None


class Transcoder(nn.Module):
    def __init__(self, cfg: TranscoderConfig, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        generator = torch.Generator().manual_seed(seed)
        dec = torch.randn(cfg.width, cfg.d_out, generator=generator)
        dec = dec / dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(dec)
        # an independent random encoder with columns of norm about ENCODER_INIT_NORM; training replaces
        # both with directions of the data for topk (Trainer.initialise_from_data)
        enc = torch.randn(cfg.d_in, cfg.width, generator=generator) / math.sqrt(cfg.d_in) * ENCODER_INIT_NORM
        self.W_enc = nn.Parameter(enc)
        self.b_enc = nn.Parameter(torch.zeros(cfg.width))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_out))
        self.W_skip = nn.Parameter(torch.zeros(cfg.d_out, cfg.d_in)) if cfg.skip else None

    @property
    def width(self) -> int:
        return self.cfg.width

    def encode(self, x: torch.Tensor) -> Encoded:
        if self.cfg.arch == "topk":
            values, indices, _, _ = _SparseTopK.apply(x, self.W_enc, self.b_enc, self.cfg.k)
            return Encoded(values, indices)
        return Encoded(torch.relu(torch.addmm(self.b_enc, x, self.W_enc)), None)

    def encode_with_aux(
        self, x: torch.Tensor, dead: torch.Tensor, k_aux: int, aux_rows: int
    ) -> tuple[Encoded, Encoded]:
        """TopK codes, and for the first `aux_rows` tokens the top `k_aux` dead features' codes (AuxK)."""
        values, indices, aux_values, aux_indices = _SparseTopK.apply(
            x, self.W_enc, self.b_enc, self.cfg.k, dead, k_aux, aux_rows
        )
        return Encoded(values, indices), Encoded(aux_values, aux_indices)

    def decode(self, encoded: Encoded) -> torch.Tensor:
        if encoded.indices is None:
            return torch.addmm(self.b_dec, encoded.values, self.W_dec)
        return F.embedding_bag(encoded.indices, self.W_dec, per_sample_weights=encoded.values, mode="sum") + (
            self.b_dec
        )

    def forward(self, x: torch.Tensor) -> TranscoderOutput:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        encoded = self.encode(flat)
        y_hat = self.decode(encoded)
        if self.W_skip is not None:
            y_hat = y_hat + flat @ self.W_skip.T
        return TranscoderOutput(y_hat.reshape(*shape[:-1], self.cfg.d_out), encoded)

    def dense(self, encoded: Encoded) -> torch.Tensor:
        """Feature activations as a dense [T, width] tensor."""
        if encoded.indices is None:
            return encoded.values
        values = encoded.values
        out = torch.zeros(values.shape[0], self.width, dtype=values.dtype, device=values.device)
        return out.scatter_(1, encoded.indices, encoded.values)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Dense feature activations z [T, width] of inputs x [T, d_in]."""
        return self.dense(self.encode(x.reshape(-1, x.shape[-1])))

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        """Unit-norm decoder rows, so a feature's activation is its output's size."""
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Drop the part of W_dec's gradient that would only change the rows' norms (then renormalised)."""
        if self.W_dec.grad is not None:
            parallel = (self.W_dec.grad * self.W_dec).sum(1, keepdim=True)
            self.W_dec.grad -= parallel * self.W_dec
