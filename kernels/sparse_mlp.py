"""An MLP that computes only the neurons it keeps.

Weights are row-per-neuron (`MlpParams`): w_in, w_gate and w_out all have shape [d_mlp, d_model], so a
neuron's three rows are contiguous and gathering neurons is a row gather.

Which work is skipped depends on how the kept sets arrive:
- one set shared by every token (a static neuron mask): `gather_neurons` once, then `mlp_dense` on the
  small MLP. On every device that is optimal (a dense GEMM on gathered weights; on a GPU cuBLAS beats a
  gather kernel), so the static case always runs torch.
- per-token sets given in advance: `sparse_mlp_per_token` computes only each token's own neurons, in all
  three projections (w_gate, w_in and w_out).
- per-token sets chosen from the activations (top-k, threshold): the activations must exist before the
  sets do, so w_gate and w_in run densely (`activations`) and only the down projection is sparse
  (`down_project_per_token`).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from workbench.kernels.activation import act_code, activation_fn
from workbench.kernels.dispatch import triton_wins_down_project, triton_wins_per_token_mlp, use_triton


@dataclass(frozen=True, kw_only=True)
class MlpParams:
    """An MLP: a = act(x w_in^T + b_in), gated act(x w_gate^T) * (x w_in^T + b_in); y = a w_out + b_out."""

    w_in: torch.Tensor  # [d_mlp, d_model]
    b_in: torch.Tensor | None = None  # [d_mlp]
    w_gate: torch.Tensor | None = None  # [d_mlp, d_model]
    w_out: torch.Tensor  # [d_mlp, d_model]: row i is neuron i's output direction
    b_out: torch.Tensor | None = None  # [d_model]
    act: str

    def __post_init__(self) -> None:
        act_code(self.act)  # an unknown name fails here, not deep inside a kernel
        if self.w_out.shape != self.w_in.shape:
            raise ValueError(
                f"w_in {tuple(self.w_in.shape)} and w_out {tuple(self.w_out.shape)} "
                "must both be [d_mlp, d_model]"
            )
        if self.w_gate is not None and self.w_gate.shape != self.w_in.shape:
            raise ValueError(f"w_gate {tuple(self.w_gate.shape)} must match w_in {tuple(self.w_in.shape)}")

    @property
    def d_mlp(self) -> int:
        return self.w_in.shape[0]

    @property
    def d_model(self) -> int:
        return self.w_in.shape[1]

    @property
    def gated(self) -> bool:
        return self.w_gate is not None


def activations(x: torch.Tensor, p: MlpParams) -> torch.Tensor:
    """Dense activations a [..., d_mlp] of x [..., d_model]."""
    h = F.linear(x, p.w_in, p.b_in)
    act = activation_fn(p.act)
    return act(F.linear(x, p.w_gate)) * h if p.gated else act(h)


def _down(a: torch.Tensor, p: MlpParams) -> torch.Tensor:
    """a [T, d_mlp] @ w_out (+ b_out) -> [T, d_model]."""
    if p.b_out is None:
        return torch.mm(a, p.w_out)
    return torch.addmm(p.b_out, a, p.w_out)


def mlp_dense(x: torch.Tensor, p: MlpParams) -> torch.Tensor:
    """The dense MLP, y [..., d_model] of x [..., d_model]; on gathered params, the static sparse MLP."""
    flat = x.reshape(-1, x.shape[-1])
    return _down(activations(flat, p), p).view(*x.shape[:-1], p.d_model)


def mlp_reference(x: torch.Tensor, p: MlpParams, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Oracle: the dense MLP with activations outside `keep` (bool [d_mlp] or [T, d_mlp]) set to zero."""
    h = x @ p.w_in.T
    if p.b_in is not None:
        h = h + p.b_in
    act = activation_fn(p.act)
    a = act(x @ p.w_gate.T) * h if p.gated else act(h)
    if keep is not None:
        a = a * keep.to(a.dtype)
    y = a @ p.w_out
    return y if p.b_out is None else y + p.b_out


def gather_neurons(p: MlpParams, neurons: torch.Tensor) -> MlpParams:
    """The MLP of only `neurons` (LongTensor [n]): contiguous copies of their rows, gathered once."""

    def rows(w: torch.Tensor | None) -> torch.Tensor | None:
        return None if w is None else w.index_select(0, neurons).contiguous()

    return MlpParams(
        w_in=rows(p.w_in),
        b_in=rows(p.b_in),
        w_gate=rows(p.w_gate),
        w_out=rows(p.w_out),
        b_out=p.b_out,
        act=p.act,
    )


def _check_sets(x_or_a: torch.Tensor, idx: torch.Tensor, name: str) -> None:
    if idx.dim() != 2 or idx.shape[0] != x_or_a.shape[0]:
        raise ValueError(
            f"idx must be [T, k] with T = {name}.shape[0] = {x_or_a.shape[0]}, not {tuple(idx.shape)}"
        )
    if idx.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"idx must hold int32 or int64 neuron indices (-1 = none), not {idx.dtype}")


def sparse_mlp_per_token(
    x: torch.Tensor, p: MlpParams, idx: torch.Tensor, backend: str | None = None
) -> torch.Tensor:
    """y [T, d_model] where token t computes only neurons idx[t] (int [T, k]; -1 = no neuron, adds nothing).

    y_t = sum_j a_tj w_out[idx_tj] + b_out with a_tj = act(x_t . w_in[idx_tj] + b_in[idx_tj]), or for a gated
    MLP act(x_t . w_gate[idx_tj]) * (x_t . w_in[idx_tj] + b_in[idx_tj]). A neuron listed twice counts twice.
    On the CPU, sets too large for row reads to pay (see _rows_pay) take the dense activations and keep
    each token's entries: the same result, sooner. On a GPU, auto mode runs Triton only where it measured
    faster (dispatch.triton_wins_per_token_mlp: up to 16 tokens reading few rows, as one fused kernel);
    elsewhere the dense activations and one GEMM (`_row_reads_pay`). Forced backend="triton" runs the
    fused kernel where dispatch.fused_mlp_pays, else two kernels (activations, then the row sum).
    """
    _check_sets(x, idx, "x")
    if use_triton(
        x, idx, p.w_in, p.w_out, backend=backend, triton_wins=triton_wins_per_token_mlp(*idx.shape, p.d_mlp)
    ):
        from workbench.kernels._triton_sparse_mlp import triton_sparse_mlp

        return triton_sparse_mlp(x, p, idx)
    if not _row_reads_pay(x.device.type):
        a_sel = activations(x, p).gather(1, idx.clamp_min(0).long()).masked_fill_(idx < 0, 0.0)
    elif idx.shape[0] == 1:
        a_sel = _one_token_activations(x, p, idx)
    elif _sddmm_pays(x, idx, p.w_in):
        a_sel, idx = _sampled_activations(x, p, idx)
    else:  # the dense activations are cheaper than reading each token's rows apart
        a_sel = activations(x, p).gather(1, idx.clamp_min(0).long()).masked_fill_(idx < 0, 0.0)
    return _down_sparse(a_sel, idx, p)


def down_project_per_token(
    a_sel: torch.Tensor, idx: torch.Tensor, p: MlpParams, backend: str | None = None
) -> torch.Tensor:
    """y_t = sum_j a_sel[t, j] w_out[idx[t, j]] + b_out, [T, d_model]: only the down projection is sparse.

    For sets chosen from dense activations (top-k, threshold), where w_gate and w_in must run densely.
    idx is int [T, k]; -1 entries add nothing.
    """
    _check_sets(a_sel, idx, "a_sel")
    if use_triton(
        a_sel, idx, p.w_out, backend=backend, triton_wins=triton_wins_down_project(*idx.shape, p.d_mlp)
    ):
        from workbench.kernels._triton_sparse_mlp import triton_down_project

        return triton_down_project(a_sel, idx, p)
    return _down_sparse(a_sel.masked_fill(idx < 0, 0.0), idx, p)


# ---- the torch paths of the per-token MLP (CPU-tuned; on a GPU, dense activations and one GEMM) ----


def _row_reads_pay(device_type: str) -> bool:
    """Whether the torch path may read weight rows one by one (index_select, SDDMM, embedding_bag).

    Not on a GPU: measured on an H200 (RESULTS.md "GPU (H200)"), the dense activations and one GEMM on the
    scattered activations beat those row reads at every measured shape (7B-class, one token, 90 %
    skipped: 0.083 ms against 0.42; down projection alone: 0.036 ms against 0.34)."""
    return device_type != "cuda"


def _row_cost(w: torch.Tensor) -> float:
    """What reading one weight row on its own costs, in rows of a dense GEMM over the same matrix.

    Measured on a 2-core CPU with no GPU (docs/architecture.md#kernels-and-triton): about 4 while the
    matrix fits in cache, 12 when it streams.
    """
    return 4.0 if w.numel() * w.element_size() <= 8 * 2**20 else 12.0


def _rows_pay(idx: torch.Tensor, w: torch.Tensor, slack: float) -> bool:
    """Whether reading each token's k rows of w beats a dense pass over all d_mlp rows (with some slack)."""
    T, k = idx.shape
    d_mlp = w.shape[0]
    return T * k <= 2 * d_mlp or k * _row_cost(w) <= slack * d_mlp


def _sddmm_pays(x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> bool:
    """torch's sampled matmul (SDDMM) exists for float32/float64 CPU tensors; use it when rows pay."""
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and _rows_pay(idx, w, 1.0)


@functools.cache
def _take_csr_beta_warning() -> None:
    """torch warns once per process that CSR tensors are beta; take that warning here, silently."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        index = torch.zeros(2, dtype=torch.int64)
        torch.sparse_csr_tensor(index, index[:1], torch.zeros(1), size=(1, 1), check_invariants=False)


def _sampled_activations(
    x: torch.Tensor, p: MlpParams, idx: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(a_sel [T, k], idx sorted per token): x_t . w[idx_tj] for only the listed pairs, as one SDDMM.

    The pairs form a CSR pattern [T, d_mlp] (columns sorted per row, as CSR wants; -1 entries left out);
    torch.sparse.sampled_addmm computes each stored entry as one dot product, without gathering rows.
    """
    _take_csr_beta_warning()
    idx = idx.sort(dim=1).values  # -1 padding first
    live = idx >= 0
    per_row = live.sum(1)
    crow = torch.cat([per_row.new_zeros(1), per_row.cumsum(0)]).to(idx.dtype)
    col = idx[live]
    pattern = torch.sparse_csr_tensor(
        crow, col, x.new_zeros(col.numel()), size=(idx.shape[0], p.d_mlp), check_invariants=False
    )

    def dots(w: torch.Tensor) -> torch.Tensor:  # [nnz]
        return torch.sparse.sampled_addmm(pattern, x, w.t(), beta=0.0).values()

    h = dots(p.w_in)
    if p.b_in is not None:
        h = h + p.b_in[col]
    act = activation_fn(p.act)
    a = act(dots(p.w_gate)) * h if p.gated else act(h)
    return x.new_zeros(idx.shape).masked_scatter_(live, a), idx


def _one_token_activations(x: torch.Tensor, p: MlpParams, idx: torch.Tensor) -> torch.Tensor:
    """a_sel [1, k] of one token: gather its k rows, one matrix-vector product (fewer ops than the SDDMM)."""
    rows = idx[0].clamp_min(0)
    h = torch.mv(p.w_in.index_select(0, rows), x[0])
    if p.b_in is not None:
        h = h + p.b_in[rows]
    act = activation_fn(p.act)
    a = act(torch.mv(p.w_gate.index_select(0, rows), x[0])) * h if p.gated else act(h)
    return a.masked_fill_(idx[0] < 0, 0.0).unsqueeze(0)


def _down_sparse(a_sel: torch.Tensor, idx: torch.Tensor, p: MlpParams) -> torch.Tensor:
    """y [T, d_model] = sum_j a_sel[t, j] w_out[idx[t, j]] + b_out, with a_sel already 0 at -1 entries.

    embedding_bag sums the listed rows without materialising them; when the sets are large, a dense GEMM
    on the scattered activations is cheaper.
    """
    if idx.shape[1] == 0:  # embedding_bag refuses empty bags of a 2-D input
        y = a_sel.new_zeros(idx.shape[0], p.d_model)
        return y if p.b_out is None else y + p.b_out
    if _row_reads_pay(a_sel.device.type) and _rows_pay(idx, p.w_out, 2.0):
        y = F.embedding_bag(idx.clamp_min(0), p.w_out, per_sample_weights=a_sel, mode="sum")
        return y if p.b_out is None else y + p.b_out
    cols = torch.where(idx < 0, p.d_mlp, idx).long()  # -1 entries land in a dropped column
    a = torch.zeros(idx.shape[0], p.d_mlp + 1, dtype=a_sel.dtype, device=a_sel.device)
    return _down(a.scatter_add_(1, cols, a_sel)[:, : p.d_mlp], p)
