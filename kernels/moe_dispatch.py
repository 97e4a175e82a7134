"""Mixture-of-experts dispatch that computes only the (token, expert) assignments that carry weight.

Expert weights use the Hugging Face transformers-5 Mixtral layout: gate_up [E, 2*dm, d] (the first dm
rows are the gate, the next dm the up projection) and down [E, d, dm]. An assignment with weight 0 or
expert -1 is skipped (that is how a dropped expert's assignments arrive), and an expert that receives
no assignment is never computed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from workbench.kernels.activation import activation_fn
from workbench.kernels.dispatch import triton_wins_moe, use_triton


def moe_reference(
    x: torch.Tensor,
    top_idx: torch.Tensor,
    top_w: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    act: str,
) -> torch.Tensor:
    """Oracle: y_t = sum_j top_w[t, j] down[e] (act(gate_e x_t) * up_e x_t), e = top_idx[t, j]; every expert
    runs densely on every token and is weighted by how much each token routes to it."""
    dm = down.shape[2]
    f = activation_fn(act)
    y = torch.zeros_like(x, dtype=torch.float32)
    for e in range(gate_up.shape[0]):
        weight = (top_w.float() * (top_idx == e)).sum(1)  # [T]
        h = f(x.float() @ gate_up[e, :dm].float().T) * (x.float() @ gate_up[e, dm:].float().T)
        y += weight[:, None] * (h @ down[e].float().T)
    return y.to(x.dtype)


def route_assignments(
    top_idx: torch.Tensor, top_w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The live assignments sorted by expert: (expert [A], token [A], weight [A]), A = live count."""
    T, k = top_idx.shape
    live = ((top_idx >= 0) & (top_w != 0)).view(-1).nonzero().squeeze(1)
    expert = top_idx.reshape(-1)[live]
    expert, order = torch.sort(expert, stable=True)
    live = live[order]
    return expert, torch.div(live, k, rounding_mode="floor"), top_w.reshape(-1)[live]


def _check(x, top_idx, top_w, gate_up, down) -> None:
    E, two_dm, d = gate_up.shape
    if top_idx.shape != top_w.shape or top_idx.shape[0] != x.shape[0]:
        raise ValueError(
            f"top_idx {tuple(top_idx.shape)} and top_w {tuple(top_w.shape)} must both be [T, k], "
            f"T = {x.shape[0]}"
        )
    if x.shape[-1] != d or down.shape != (E, d, two_dm // 2):
        raise ValueError(
            "want x [T, d], gate_up [E, 2*dm, d], down [E, d, dm]; "
            f"got {tuple(x.shape)}, {tuple(gate_up.shape)}, {tuple(down.shape)}"
        )


def moe_dispatch(
    x: torch.Tensor,
    top_idx: torch.Tensor,
    top_w: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    act: str,
    backend: str | None = None,
) -> torch.Tensor:
    """y [T, d] of x [T, d] routed to experts top_idx [T, k] with weights top_w [T, k], dead ones skipped."""
    _check(x, top_idx, top_w, gate_up, down)
    if use_triton(
        x, top_idx, top_w, gate_up, down, backend=backend, triton_wins=triton_wins_moe(gate_up.shape[0])
    ):
        from workbench.kernels._triton_moe import triton_moe

        return triton_moe(x, top_idx, top_w, gate_up, down, act)
    expert, token, weight = route_assignments(top_idx, top_w)
    counts = torch.bincount(expert, minlength=gate_up.shape[0]).tolist()
    f = activation_fn(act)
    dm = down.shape[2]
    y = torch.zeros_like(x)
    start = 0
    for e, count in enumerate(counts):  # a loop over experts; those with no assignment cost nothing
        if count == 0:
            continue
        rows = token[start : start + count]
        xs = x.index_select(0, rows)
        gu = F.linear(xs, gate_up[e])  # [count, 2*dm]
        h = f(gu[:, :dm]) * gu[:, dm:]
        y.index_add_(0, rows, F.linear(h, down[e]) * weight[start : start + count, None].to(x.dtype))
        start += count
    return y
