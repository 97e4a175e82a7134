"""Choosing between a kernel's Triton path and its torch path.

Auto (backend=None) takes Triton only when every tensor is on a CUDA device, triton imports, and the
kernel's rule below does not say its torch path measured faster at that shape on a GPU;
backend="triton" forces it (the parity tests run it on CPU tensors under TRITON_INTERPRET=1).
WORKBENCH_DISABLE_TRITON=1 always wins, forced or not: it is the switch that rules Triton out when
a kernel is suspected, so it must not be overridable by a call site.

The rules (`triton_wins_*`) follow the H200 measurements of kernels/gpu_check.py (RESULTS.md, "GPU
(H200)", reports kernels/gpu_results_h200*.json): device times of CUDA-graph replays, bfloat16, weights
read from HBM. Shapes between measured points follow the nearer side conservatively (torch).
"""

from __future__ import annotations

import functools
import os

import torch

BACKENDS = ("torch", "triton")
DISABLE_ENV = "WORKBENCH_DISABLE_TRITON"


@functools.cache
def triton_importable() -> bool:
    """Whether `import triton` works here (checked once)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def triton_disabled() -> bool:
    return os.environ.get(DISABLE_ENV) == "1"


def interpreting() -> bool:
    """Whether Triton kernels run in the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def use_triton(*tensors: torch.Tensor | None, backend: str | None = None, triton_wins: bool = True) -> bool:
    """True to run the Triton path for these tensors, False for the torch path (None entries are ignored).

    triton_wins: the kernel's measured rule for this shape; False makes auto mode take torch (a forced
    backend="triton" still runs Triton)."""
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None (automatic), not {backend!r}")
    if triton_disabled() or backend == "torch":
        return False
    on_cuda = all(t.is_cuda for t in tensors if t is not None)
    if backend is None:
        return on_cuda and triton_wins and triton_importable()
    if not triton_importable():
        raise RuntimeError(
            "backend='triton' was asked for but triton does not import here; "
            "install it (`pip install triton`, Linux) or pass backend='torch'."
        )
    if not on_cuda and not interpreting():
        raise RuntimeError(
            "backend='triton' on CPU tensors needs Triton's interpreter: set TRITON_INTERPRET=1 in the "
            "environment before triton is first imported, move the tensors to a CUDA device, "
            "or pass backend='torch'."
        )
    return True


# ---- where each Triton kernel measured faster than its torch path (H200, bfloat16) ----


FUSED_MAX_TOKENS = 16


def fused_mlp_pays(tokens: int, k: int, d_mlp: int) -> bool:
    """Per-token neuron sets on Triton: the fused kernel (one launch, each listed row read once, atomic adds
    into a float32 output) for up to 16 tokens that read at most 1.8 d_mlp rows in all (any count on
    MLPs of at most 2048 neurons), else the two kernels (activations, then the row sum; deterministic).
    1.8 lies between the largest measured win (1.6 d_mlp rows: 16 tokens at 90 %) and the smallest loss.

    Measured as whole calls (H200, bfloat16, kernels/gpu_results_h200_fused.json): 7B-class (11008
    neurons) at 90 %, 1/4/16 tokens, fused 0.015/0.034/0.108 ms against two kernels 0.026/0.047/0.133;
    SmolLM2 (1536) faster at every point (1-16 tokens, 50-97 %). With the first fused launch the fused
    kernel lost at 50 % from 4 tokens (2 d_mlp rows: 0.239 against 0.168 ms)."""
    return 0 < tokens <= FUSED_MAX_TOKENS and (tokens * k <= 1.8 * d_mlp or d_mlp <= 2048)


def triton_wins_per_token_mlp(tokens: int, k: int, d_mlp: int) -> bool:
    """The whole per-token MLP: Triton (the fused kernel) where fused_mlp_pays, else torch (on a GPU,
    dense activations and one GEMM on the scattered activations, slower than the plain dense MLP: 0.10
    against 0.082 ms for one 7B-class token, 0.15 at 16 tokens). Measured wins over that torch path:
    7B-class one token at 50/90/97 % (0.070/0.015/0.011 ms against 0.104/0.101/0.098; 0.070 and 0.011
    with the first fused launch), 16 tokens at 90 % (0.108 against 0.153) and 97 %; SmolLM2 at every
    point. Lost: 7B-class from 4 tokens at 50 % (the first fused launch 0.239 and the two kernels 0.168
    against 0.148 ms)."""
    return fused_mlp_pays(tokens, k, d_mlp)


def triton_wins_down_project(tokens: int, k: int, d_mlp: int) -> bool:
    """The down projection alone (top-k sets): the row-sum kernel reads tokens * k rows one by one, the
    torch path (scatter, one GEMM) all d_mlp rows at full bandwidth. Measured: one token at 90 % wins
    (7B-class: 0.013 ms with the swept launch against 0.036); 16 tokens lose (0.069 against 0.037)."""
    return tokens * k * 8 <= d_mlp


def triton_wins_nm(tokens: int, n: int, m: int) -> bool:
    """N:M weights: only the few-token kernel at one token and at most 1 kept in 4 beat cuBLAS on the
    masked dense weight (1:4, 11008 x 4096: 0.018 ms against 0.026); at 2:4 the kept values plus their
    one-byte offsets are 3/4 of the dense bytes and the dense GEMM won at every measured token count."""
    return tokens == 1 and 4 * n <= m


def triton_wins_block_masked(tokens: int, live_tiles: float) -> bool:
    """Block-skipping matmul (32 x 32 tiles, 4096 x 4096): wins at 97 % of the tiles empty for 1 to 2048
    tokens (1.5x to 4.6x), at 90 % only at 2048 tokens (2.0x); loses at 75 % and below."""
    return live_tiles <= 0.05 or (live_tiles <= 0.10 and tokens >= 2048)


def triton_wins_head_attention(d_head: int) -> bool:
    """Kept-head attention against SDPA on the kept heads: wins with 128-wide heads (1.1x to 2.2x, 512
    and 2048 tokens, graph and eager alike); with 64-wide heads SDPA won at 2048 and 4096 tokens (0.90x,
    0.56x) and in eager mode at 512."""
    return d_head >= 128


def triton_wins_moe(n_experts: int) -> bool:
    """MoE dispatch against the torch loop over experts: wins with many small experts (60 of 1408: 4.1x
    at 16 tokens, 5.5x at 512), loses with few large ones (8 of 14336: 0.70x, 0.50x, 0.28x at 16, 512 and
    4096 tokens). The crossover between 8 and 60 experts was not measured."""
    return n_experts > 8
