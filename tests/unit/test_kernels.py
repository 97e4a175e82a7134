"""Oracle tests for workbench.kernels: every torch path and every Triton path equals the dense reference.

The Triton paths run on CPU tensors under TRITON_INTERPRET=1 (set by tests/conftest.py before triton is
first imported); on a CUDA machine with TRITON_INTERPRET=0 they run compiled, with a tf32 tolerance.
Shapes are tiny because the interpreter simulates every program instance in numpy.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from workbench.bench.kernels import triton_benchmark
from workbench.kernels import dispatch, sparse_mlp
from workbench.kernels.head_attention import head_attention_reference, head_masked_attention
from workbench.kernels.masked_matmul import (
    BlockMaskedWeight,
    block_masked_matmul,
    masked_matmul_reference,
    nm_compress,
    nm_matmul,
    semi_structured_2to4,
)
from workbench.kernels.moe_dispatch import moe_dispatch, moe_reference
from workbench.kernels.sparse_mlp import (
    MlpParams,
    activations,
    down_project_per_token,
    gather_neurons,
    mlp_dense,
    mlp_reference,
    sparse_mlp_per_token,
)

D_MODEL, D_MLP = 40, 64


def assert_close(y: torch.Tensor, ref: torch.Tensor, tol: float = 1e-5) -> None:
    """Max error within tol of the reference's scale (float32 sums reorder)."""
    assert y.shape == ref.shape and y.dtype == ref.dtype
    err = (y.float() - ref.float()).abs().max().item()
    assert err <= tol * max(1.0, ref.abs().max().item()), f"max error {err}"


@pytest.fixture
def triton_device() -> str:
    """Where the Triton paths run here: 'cpu' under the interpreter, else 'cuda'; skips if neither."""
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") == "1":
        from triton.runtime.interpreter import InterpretedFunction

        from workbench.kernels import _triton_sparse_mlp

        # the kernels were decorated while the interpreter was on, so they really run in it
        assert isinstance(_triton_sparse_mlp._gather_dot_kernel, InterpretedFunction)
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    pytest.skip("Triton parity needs TRITON_INTERPRET=1 (tests/conftest.py sets it) or a CUDA device")


def tolerance(device: str) -> float:
    return 1e-5 if device == "cpu" else 1e-2  # tl.dot takes float32 as tf32 on a GPU


def random_mlp(gated: bool, bias: bool, act: str, device: str = "cpu", seed: int = 0) -> MlpParams:
    g = torch.Generator().manual_seed(seed)

    def w(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) / shape[-1] ** 0.5).to(device)

    return MlpParams(
        w_in=w(D_MLP, D_MODEL),
        b_in=w(D_MLP) if bias else None,
        w_gate=w(D_MLP, D_MODEL) if gated else None,
        w_out=w(D_MLP, D_MODEL),
        b_out=w(D_MODEL) if bias else None,
        act=act,
    )


def padded_sets(tokens: int, k: int, pool: int = D_MLP, seed: int = 1) -> torch.Tensor:
    """[tokens, k] distinct neurons from range(pool) per token, with -1 padding (fewer for some tokens)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.rand(tokens, pool, generator=g).argsort(1)[:, :k]
    idx[0, k // 2 :] = -1
    if tokens > 2:
        idx[2] = -1  # a token with no neuron at all
    return idx


def keep_of(idx: torch.Tensor) -> torch.Tensor:
    """bool [T, d_mlp] of per-token sets (-1 ignored)."""
    keep = torch.zeros(idx.shape[0], D_MLP + 1, dtype=torch.bool, device=idx.device)
    keep.scatter_(1, torch.where(idx < 0, D_MLP, idx), True)
    return keep[:, :D_MLP]


MLP_KINDS = [(False, True, "relu"), (False, False, "gelu_new"), (True, False, "silu"), (True, True, "gelu")]


# ---- sparse MLP ----


@pytest.mark.parametrize(("gated", "bias", "act"), MLP_KINDS)
def test_shared_set_is_the_gathered_dense_mlp(gated, bias, act):
    p = random_mlp(gated, bias, act)
    x = torch.randn(7, D_MODEL)
    neurons = torch.tensor([1, 5, 6, 20, 33, 63])
    keep = torch.zeros(D_MLP, dtype=torch.bool)
    keep[neurons] = True
    assert_close(mlp_dense(x, gather_neurons(p, neurons)), mlp_reference(x, p, keep))
    assert_close(mlp_dense(x, p), mlp_reference(x, p))


# (tokens, k) -> the CPU paths of the up and down projections (the cost rule in sparse_mlp chooses)
CPU_PATHS = {(1, 9): "one-token+bag", (3, 9): "sddmm+bag", (40, 20): "dense+bag", (40, 40): "dense+gemm"}


def cpu_path(x: torch.Tensor, p: MlpParams, idx: torch.Tensor) -> str:
    up = "one-token" if len(idx) == 1 else "sddmm" if sparse_mlp._sddmm_pays(x, idx, p.w_in) else "dense"
    return up + ("+bag" if sparse_mlp._rows_pay(idx, p.w_out, 2.0) else "+gemm")


@pytest.mark.parametrize(("gated", "bias", "act"), MLP_KINDS)
@pytest.mark.parametrize(("tokens", "k"), list(CPU_PATHS), ids=list(CPU_PATHS.values()))
def test_per_token_sets_torch(gated, bias, act, tokens, k):
    p = random_mlp(gated, bias, act)
    x = torch.randn(tokens, D_MODEL)
    idx = padded_sets(tokens, k)
    assert cpu_path(x, p, idx) == CPU_PATHS[tokens, k]
    ref = mlp_reference(x, p, keep_of(idx))
    assert_close(sparse_mlp_per_token(x, p, idx, backend="torch"), ref)
    assert_close(sparse_mlp_per_token(x, p, idx.int(), backend="torch"), ref)


@pytest.mark.parametrize(("tokens", "k"), [(3, 9), (40, 40)], ids=["embedding-bag", "gemm"])
def test_down_projection_only_torch(tokens, k):
    p = random_mlp(True, True, "silu")
    x = torch.randn(tokens, D_MODEL)
    idx = padded_sets(tokens, k)
    a = activations(x, p)
    ref = (a * keep_of(idx)) @ p.w_out + p.b_out
    a_sel = a.gather(1, idx.clamp_min(0))
    assert_close(down_project_per_token(a_sel, idx, p), ref)


def per_token_reference(x: torch.Tensor, p: MlpParams, idx: torch.Tensor) -> torch.Tensor:
    """Oracle by the definition, entry by entry: y_t = sum_j a[t, idx_tj] w_out[idx_tj] + b_out."""
    live = (idx >= 0).to(x.dtype)
    safe = idx.clamp_min(0)
    a = activations(x, p).gather(1, safe) * live
    y = (a[:, :, None] * p.w_out[safe]).sum(1)
    return y if p.b_out is None else y + p.b_out


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_a_neuron_listed_twice_counts_twice(backend, request):
    device = request.getfixturevalue("triton_device") if backend == "triton" else "cpu"
    p = random_mlp(True, True, "silu", device)
    idx = torch.tensor([[3, 7, 7, -1], [1, 1, 1, 2]], device=device)
    x = torch.randn(2, D_MODEL, device=device)
    assert_close(
        sparse_mlp_per_token(x, p, idx, backend=backend), per_token_reference(x, p, idx), tolerance(device)
    )


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize(
    "shape", [(3, 0), (1, 0), (3, 4), (1, 4)], ids=["k0", "one-token-k0", "all-padding", "one"]
)
def test_empty_sets_leave_the_output_bias(backend, shape, request):
    device = request.getfixturevalue("triton_device") if backend == "triton" else "cpu"
    p = random_mlp(True, True, "silu", device)
    idx = torch.full(shape, -1, device=device)
    bias = p.b_out.expand(shape[0], D_MODEL)
    assert_close(
        sparse_mlp_per_token(torch.randn(shape[0], D_MODEL, device=device), p, idx, backend=backend), bias
    )
    assert_close(down_project_per_token(torch.ones(shape, device=device), idx, p, backend=backend), bias)


def test_sparse_paths_never_read_unlisted_neurons():
    p = random_mlp(True, True, "silu")
    idx = padded_sets(2, 5, pool=30)
    x = torch.randn(2, D_MODEL)
    ref = mlp_reference(x, p, keep_of(idx))
    unlisted = torch.arange(30, D_MLP)
    poisoned = replace(
        p,
        w_in=p.w_in.index_fill(0, unlisted, float("nan")),
        w_gate=p.w_gate.index_fill(0, unlisted, float("nan")),
        w_out=p.w_out.index_fill(0, unlisted, float("nan")),
    )
    assert_close(sparse_mlp_per_token(x, poisoned, idx, backend="torch"), ref)


@pytest.mark.parametrize(("gated", "bias", "act"), MLP_KINDS)
def test_per_token_sets_triton(triton_device, gated, bias, act):
    p = random_mlp(gated, bias, act, triton_device)
    x = torch.randn(3, D_MODEL, device=triton_device)
    idx = padded_sets(3, 40).to(triton_device)  # 40 slots: two blocks of 32, the second partly masked
    ref = mlp_reference(x, p, keep_of(idx))
    tol = tolerance(triton_device)
    assert_close(sparse_mlp_per_token(x, p, idx, backend="triton"), ref, tol)
    a = activations(x, p)
    a_sel = a.gather(1, idx.clamp_min(0))
    ref_down = (a * keep_of(idx)) @ p.w_out + (0 if p.b_out is None else p.b_out)
    assert_close(down_project_per_token(a_sel, idx, p, backend="triton"), ref_down, tol)


def test_sparse_mlp_launch_shapes_triton(triton_device):
    """Other tiles and warps, and the row-sum split into slot chunks summed apart, compute the same MLP."""
    from workbench.kernels._triton_sparse_mlp import Blocks, triton_down_project, triton_sparse_mlp

    p = random_mlp(True, True, "silu", triton_device)
    x = torch.randn(3, D_MODEL, device=triton_device)
    idx = padded_sets(3, 40).to(triton_device)
    ref = mlp_reference(x, p, keep_of(idx))
    a = activations(x, p)
    ref_down = (a * keep_of(idx)) @ p.w_out + p.b_out
    tol = tolerance(triton_device)
    # 40 slots: chunks of 16 (3 chunks, the last partly masked) and of 8 (5 chunks, one per 8 slots)
    for up, down in ((Blocks(8, 16, 2), Blocks(16, 32, 2, 3)), (Blocks(16, 64), Blocks(8, 16, 4, 8))):
        assert_close(triton_sparse_mlp(x, p, idx, up, down), ref, tol)
        assert_close(triton_down_project(a.gather(1, idx.clamp_min(0)), idx, p, down), ref_down, tol)


def poison_unlisted(p: MlpParams, pool: int) -> MlpParams:
    """p with every neuron from `pool` on set to NaN in w_in, w_gate and w_out: a read of one would show."""
    unlisted = torch.arange(pool, D_MLP, device=p.w_in.device)

    def nan(w: torch.Tensor | None) -> torch.Tensor | None:
        return None if w is None else w.index_fill(0, unlisted, float("nan"))

    return replace(p, w_in=nan(p.w_in), w_gate=nan(p.w_gate), w_out=nan(p.w_out))


@pytest.mark.parametrize(("gated", "bias", "act"), MLP_KINDS)
def test_fused_sparse_mlp_triton(triton_device, gated, bias, act):
    """The fused kernel (one launch, atomic adds) equals the reference and never reads unlisted neurons:
    whole rows, rows walked in column blocks, one slot per step, a chunk of several steps per program."""
    from workbench.kernels._triton_sparse_mlp import FusedBlocks, fused_blocks, triton_sparse_mlp_fused

    p = random_mlp(gated, bias, act, triton_device)
    x = torch.randn(3, D_MODEL, device=triton_device)
    idx = padded_sets(3, 23, pool=40).to(triton_device)
    idx[1, 1] = idx[1, 0]  # a neuron listed twice counts twice
    ref = per_token_reference(x, p, idx)
    poisoned = poison_unlisted(p, 40)
    tol = tolerance(triton_device)
    assert fused_blocks(3, 23, D_MODEL) == FusedBlocks(4, 64, 4, chunk=4)
    for blocks in (None, FusedBlocks(2, 16, 2, 6), FusedBlocks(1, 64, 1, 1), FusedBlocks(8, 32, 4, 16)):
        assert_close(triton_sparse_mlp_fused(x, poisoned, idx, blocks), ref, tol)


@pytest.mark.parametrize("d_model", [1500, 5000], ids=["whole-rows", "column-steps"])
def test_fused_sparse_mlp_default_launch_of_wide_rows_triton(triton_device, d_model):
    """The default launches of 7B-class rows (whole rows up to 4096 columns) and of wider ones (2048
    columns a step, an atomic add per step), on NaN-poisoned unlisted rows."""
    from workbench.kernels._triton_sparse_mlp import FusedBlocks, fused_blocks, triton_sparse_mlp_fused

    g = torch.Generator().manual_seed(3)
    w = lambda: (torch.randn(12, d_model, generator=g) / d_model**0.5).to(triton_device)  # noqa: E731
    p = MlpParams(w_in=w(), w_gate=w(), w_out=w(), b_out=w()[0], act="silu")
    idx = torch.tensor([[0, 3, 5, -1, 2], [7, 1, 1, 4, 6]], device=triton_device)
    unlisted = torch.arange(8, 12, device=triton_device)
    poisoned = replace(
        p, **{f: getattr(p, f).index_fill(0, unlisted, float("nan")) for f in ("w_in", "w_gate", "w_out")}
    )
    x = torch.randn(2, d_model, device=triton_device)
    assert fused_blocks(2, 5, d_model) == FusedBlocks(2, 2048, 4, per_sm=2)
    assert_close(
        triton_sparse_mlp_fused(x, poisoned, idx), per_token_reference(x, p, idx), tolerance(triton_device)
    )


def test_fused_sparse_mlp_casts_in_kernel_triton(triton_device):
    """blocks.cast: the last program of each token writes the half-precision output (no cast kernel)."""
    from workbench.kernels._triton_sparse_mlp import FusedBlocks, triton_sparse_mlp_fused

    p = random_mlp(True, True, "silu", triton_device)
    half = MlpParams(
        **{f: getattr(p, f).half() for f in ("w_in", "b_in", "w_gate", "w_out", "b_out")}, act="silu"
    )
    x = torch.randn(3, D_MODEL, device=triton_device).half()
    idx = padded_sets(3, 23, pool=40).to(triton_device)
    ref = per_token_reference(x.float(), p, idx).half()  # float32 weights: the half rounding tolerance
    for blocks in (FusedBlocks(4, 64, 4, 8, cast=True), FusedBlocks(2, 16, 2, 4, cast=True)):
        y = triton_sparse_mlp_fused(x, poison_unlisted(half, 40), idx, blocks)
        assert y.dtype == torch.float16
        assert_close(y, ref, 1e-2)


def test_per_token_triton_path_fuses_few_tokens(triton_device, monkeypatch):
    """backend="triton" runs the fused kernel up to FUSED_MAX_TOKENS tokens, the two kernels beyond."""
    from workbench.kernels import _triton_sparse_mlp

    taken = []
    for name in ("triton_sparse_mlp_fused", "triton_sparse_mlp_two_kernels"):
        real = getattr(_triton_sparse_mlp, name)
        monkeypatch.setattr(
            _triton_sparse_mlp,
            name,
            lambda *a, _real=real, _name=name, **kw: taken.append(_name) or _real(*a, **kw),
        )
    p = random_mlp(False, True, "relu", triton_device)
    for tokens in (1, dispatch.FUSED_MAX_TOKENS, dispatch.FUSED_MAX_TOKENS + 1):
        x = torch.randn(tokens, D_MODEL, device=triton_device)
        idx = padded_sets(tokens, 5).to(triton_device)
        assert_close(sparse_mlp_per_token(x, p, idx, backend="triton"), per_token_reference(x, p, idx), 1e-5)
    assert taken == ["triton_sparse_mlp_fused"] * 2 + ["triton_sparse_mlp_two_kernels"]


# ---- masked matmuls ----


def nm_mask(rows: int, cols: int, n: int, m: int) -> torch.Tensor:
    """A random n:m mask with two groups holding fewer than n (padding slots in the compressed form)."""
    g = torch.Generator().manual_seed(2)
    top = torch.rand(rows, cols // m, m, generator=g).topk(n, -1).indices
    mask = torch.zeros(rows, cols // m, m, dtype=torch.bool).scatter_(-1, top, True)
    mask[0, 0] = False
    mask[3, 2, :] = False
    mask[3, 2, 0] = True  # one kept at in-group offset 0, next to padding slots of offset 0
    return mask.view(rows, cols)


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4)])
@pytest.mark.parametrize("bias", [False, True])
def test_nm_matmul(n, m, bias):
    w, x = torch.randn(48, 96), torch.randn(5, 96)
    b = torch.randn(48) if bias else None
    mask = nm_mask(48, 96, n, m)
    nmw = nm_compress(w, mask, n, m)
    assert nmw.values.shape == (48, 96 * n // m) and nmw.cols.dtype == torch.uint8
    assert torch.equal(nmw.dense(), w * mask)
    assert_close(nm_matmul(x, nmw, b), masked_matmul_reference(x, w, mask, b))


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (2, 8)])
@pytest.mark.parametrize("tokens", [5, 37], ids=["few-token-kernel", "tiled-kernel"])
def test_nm_matmul_triton(triton_device, n, m, tokens):
    from workbench.kernels._triton_masked_matmul import GEMV_MAX_TOKENS, GemvBlocks, triton_nm_matmul

    w, x, b = torch.randn(48, 96), torch.randn(tokens, 96), torch.randn(48)
    mask = nm_mask(48, 96, n, m)
    nmw = nm_compress(w.to(triton_device), mask.to(triton_device), n, m)
    ref = masked_matmul_reference(x, w, mask, b)
    y = nm_matmul(x.to(triton_device), nmw, b.to(triton_device), backend="triton")
    assert_close(y.cpu(), ref, tolerance(triton_device))
    if tokens <= GEMV_MAX_TOKENS:  # another launch of the few-token kernel: row and slot tiles cut short
        y = triton_nm_matmul(x.to(triton_device), nmw, b.to(triton_device), GemvBlocks(32, 32, 2))
        assert_close(y.cpu(), ref, tolerance(triton_device))


def test_nm_compress_refuses_a_mask_that_is_not_n_m():
    mask = nm_mask(8, 16, 2, 4)
    mask[5, 4:8] = False
    mask[5, 4:7] = True
    with pytest.raises(ValueError, match=r"not 2:4: row 5, inputs 4..7 keep 3"):
        nm_compress(torch.randn(8, 16), mask, 2, 4)
    with pytest.raises(ValueError, match="multiple of m"):
        nm_compress(torch.randn(8, 18), torch.ones(8, 18, dtype=torch.bool), 2, 4)


def unstructured(rows: int = 80, cols: int = 72) -> tuple[torch.Tensor, torch.Tensor]:
    """A 30 % mask with whole 32 x 32 tiles empty; sizes not multiples of the tile."""
    g = torch.Generator().manual_seed(3)
    mask = torch.rand(rows, cols, generator=g) < 0.3
    mask[:32, 32:64] = False
    mask[64:, :] = False
    mask[32:64, 64:] = False
    return torch.randn(rows, cols, generator=g), mask


def test_block_masked_weight_skips_empty_tiles():
    w, mask = unstructured()
    bw = BlockMaskedWeight.from_mask(w, mask)
    expected = torch.tensor([[True, False, True], [True, True, False], [False, False, False]])
    assert torch.equal(bw.occupancy, expected)
    assert bw.tile_ptr.tolist() == [0, 2, 4, 4] and bw.tile_cols.tolist() == [0, 2, 0, 1]
    assert bw.live_tiles == 4 / 9
    x, b = torch.randn(5, 72), torch.randn(80)
    assert_close(block_masked_matmul(x, bw, b), masked_matmul_reference(x, w, mask, b))
    assert semi_structured_2to4(w * mask) is None  # CPU: no semi-structured baseline


def test_block_masked_matmul_triton(triton_device):
    w, mask = unstructured()
    x, b = torch.randn(5, 72), torch.randn(80)
    bw = BlockMaskedWeight.from_mask(w.to(triton_device), mask.to(triton_device))
    for bias in (None, b):
        ref = masked_matmul_reference(x, w, mask, bias)
        y = block_masked_matmul(
            x.to(triton_device), bw, None if bias is None else bias.to(triton_device), backend="triton"
        )
        assert_close(y.cpu(), ref, tolerance(triton_device))


# ---- attention over kept heads ----


def gqa_inputs(dh: int, device: str = "cpu", T: int = 37):
    """6 query heads over 3 key/value heads; kept heads 0, 1 and 5 (non-contiguous) use kv heads 0 and 2.

    kv head 1 serves no kept head and is NaN: a path that touched it would fail.
    """
    g = torch.Generator().manual_seed(4)
    kept = torch.tensor([0, 1, 5])
    kv_of_head = kept // 2
    q = torch.randn(2, 3, T, dh, generator=g)
    k, v = torch.randn(2, 3, T, dh, generator=g), torch.randn(2, 3, T, dh, generator=g)
    ref = head_attention_reference(q, k, v, kv_of_head, dh**-0.5)
    k[:, 1], v[:, 1] = float("nan"), float("nan")
    return [t.to(device) for t in (q, k, v, kv_of_head)], ref


@pytest.mark.parametrize("dh", [16, 32, 64])
def test_head_attention_torch(dh):
    (q, k, v, kv_of_head), ref = gqa_inputs(dh)
    assert_close(head_masked_attention(q, k, v, kv_of_head, dh**-0.5, backend="torch"), ref)


@pytest.mark.parametrize("dh", [16, 32, 64, 24])
def test_head_attention_triton(triton_device, dh):
    (q, k, v, kv_of_head), ref = gqa_inputs(dh, triton_device)
    z = head_masked_attention(q, k, v, kv_of_head, dh**-0.5, backend="triton")
    assert_close(z.cpu(), ref, tolerance(triton_device))


@pytest.mark.parametrize("blocks", [(16, 32, 2, 2), (32, 16, 4, None)], ids=["keys-wider", "queries-wider"])
def test_head_attention_triton_launches(triton_device, blocks):
    from workbench.kernels._triton_head_attention import AttentionBlocks, triton_head_attention

    (q, k, v, kv_of_head), ref = gqa_inputs(32, triton_device)
    z = triton_head_attention(q, k, v, kv_of_head, 32**-0.5, AttentionBlocks(*blocks))
    assert_close(z.cpu(), ref, tolerance(triton_device))


def test_head_attention_reference_is_causal_softmax():
    q, k, v = torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4)
    z = head_attention_reference(q, k, v, torch.tensor([0]), 0.5)
    first = torch.softmax((q[0, 0, 1] @ k[0, 0, :2].T) * 0.5, -1) @ v[0, 0, :2]
    assert torch.allclose(z[0, 0, 0], v[0, 0, 0]) and torch.allclose(z[0, 0, 1], first, atol=1e-6)


# ---- mixture-of-experts dispatch ----


def moe_inputs(device: str = "cpu", act_scale: float = 0.2):
    """23 tokens, 5 experts, top-2; expert 3 receives nothing, some assignments are dropped (w 0 or -1).

    Returns the inputs with expert 3's weights NaN (a path that ran it would fail) and the reference.
    """
    g = torch.Generator().manual_seed(5)
    T, d, dm, E = 23, 40, 24, 5
    x = torch.randn(T, d, generator=g)
    gate_up = torch.randn(E, 2 * dm, d, generator=g) * act_scale
    down = torch.randn(E, d, dm, generator=g) * act_scale
    logits = torch.randn(T, E, generator=g)
    logits[:, 3] = -1e4
    top_w, top_idx = torch.softmax(logits, -1).topk(2, -1)
    top_w[2, 0] = 0.0  # dropped: zero weight
    top_idx[5, 1] = -1  # dropped: no expert
    top_w[7] = 0.0  # a token with no live assignment
    ref = moe_reference(x, top_idx, top_w, gate_up, down, "silu")
    gate_up[3], down[3] = float("nan"), float("nan")
    return [t.to(device) for t in (x, top_idx, top_w, gate_up, down)], ref


def test_moe_dispatch_torch():
    inputs, ref = moe_inputs()
    assert_close(moe_dispatch(*inputs, "silu", backend="torch"), ref)


def test_moe_dispatch_triton(triton_device):
    inputs, ref = moe_inputs(triton_device)
    assert_close(moe_dispatch(*inputs, "silu", backend="triton").cpu(), ref, tolerance(triton_device))


def test_moe_dispatch_triton_launches(triton_device):
    from workbench.kernels._triton_moe import MoeBlocks, triton_moe

    inputs, ref = moe_inputs(triton_device)
    y = triton_moe(*inputs, "silu", config=MoeBlocks(t=16, f=16, d=32, warps=2))
    assert_close(y.cpu(), ref, tolerance(triton_device))


# ---- dispatch ----


def test_dispatch_choices(monkeypatch):
    monkeypatch.delenv(dispatch.DISABLE_ENV, raising=False)
    x = torch.zeros(2)
    assert not dispatch.use_triton(x)  # auto: CPU tensors take torch
    assert not dispatch.use_triton(x, backend="torch")
    with pytest.raises(ValueError, match="backend must be one of"):
        dispatch.use_triton(x, backend="cuda")
    monkeypatch.setenv(dispatch.DISABLE_ENV, "1")
    assert not dispatch.use_triton(x, backend="triton")  # the switch wins even over a forced backend


def test_auto_mode_follows_the_measured_rules(monkeypatch):
    """On a GPU, auto mode takes Triton only where it measured faster (RESULTS.md "GPU (H200)"); a forced
    backend='triton' still runs it."""
    monkeypatch.delenv(dispatch.DISABLE_ENV, raising=False)
    monkeypatch.setattr(dispatch, "triton_importable", lambda: True)
    gpu = SimpleNamespace(is_cuda=True)
    assert dispatch.use_triton(gpu) and not dispatch.use_triton(gpu, triton_wins=False)
    assert dispatch.use_triton(gpu, backend="triton", triton_wins=False)
    # the measured points each rule was drawn from
    wins = dispatch.triton_wins_per_token_mlp
    assert wins(1, 1101, 11008) and wins(1, 5504, 11008) and wins(16, 1101, 11008) and wins(16, 330, 11008)
    assert wins(1, 154, 1536) and wins(16, 768, 1536)  # SmolLM2: every measured point, 50 % at 16 tokens
    assert not wins(4, 5504, 11008) and not wins(16, 5504, 11008)  # 7B-class, 50 %, from 4 tokens
    assert not wins(17, 10, 1536)  # beyond the fused kernel's token counts
    assert dispatch.fused_mlp_pays(16, 1101, 11008) and not dispatch.fused_mlp_pays(4, 5504, 11008)
    assert dispatch.triton_wins_down_project(1, 1101, 11008) and not dispatch.triton_wins_down_project(
        16, 1101, 11008
    )
    assert dispatch.triton_wins_nm(1, 1, 4)
    assert not dispatch.triton_wins_nm(1, 2, 4) and not dispatch.triton_wins_nm(16, 1, 4)
    assert dispatch.triton_wins_block_masked(1, 0.03) and dispatch.triton_wins_block_masked(2048, 0.1)
    assert not dispatch.triton_wins_block_masked(256, 0.1) and not dispatch.triton_wins_block_masked(
        2048, 0.25
    )
    assert dispatch.triton_wins_head_attention(128) and not dispatch.triton_wins_head_attention(64)
    assert dispatch.triton_wins_moe(60) and not dispatch.triton_wins_moe(8)
    # on a GPU the torch path of per-token sets is dense activations and one GEMM, not row reads
    assert not sparse_mlp._row_reads_pay("cuda") and sparse_mlp._row_reads_pay("cpu")


def test_kernels_ask_their_rule(monkeypatch):
    """Each kernel hands the dispatcher its rule's verdict for the shape at hand."""
    import importlib

    verdicts = []

    def spy(*tensors, backend=None, triton_wins=True):
        verdicts.append(triton_wins)
        return False

    for name in ("sparse_mlp", "masked_matmul", "head_attention", "moe_dispatch"):
        monkeypatch.setattr(importlib.import_module(f"workbench.kernels.{name}"), "use_triton", spy)
    p = random_mlp(True, False, "silu")
    sparse_mlp_per_token(torch.randn(1, D_MODEL), p, padded_sets(1, 4))  # 1 token: fused
    sparse_mlp_per_token(torch.randn(17, D_MODEL), p, padded_sets(17, 9))  # 17 tokens: torch
    down_project_per_token(torch.randn(3, 9), padded_sets(3, 9), p)  # 3 x 9 x 8 > 64 rows: torch
    w, mask = unstructured()
    block_masked_matmul(torch.randn(2, 72), BlockMaskedWeight.from_mask(w, mask))  # 4 of 9 tiles live
    nm_matmul(torch.randn(1, 96), nm_compress(torch.randn(48, 96), nm_mask(48, 96, 1, 4), 1, 4))
    (q, k, v, kv_of_head), _ = gqa_inputs(16)
    head_masked_attention(q, k, v, kv_of_head, 0.25)
    moe_dispatch(*moe_inputs()[0], "silu")  # 5 experts
    assert verdicts == [True, False, False, False, True, False, False]


def test_launch_choices_follow_the_sweep():
    from workbench.kernels._triton_sparse_mlp import Blocks, down_blocks, up_blocks

    assert up_blocks(1, 1101, 4096) == Blocks(4, 2048, 8) and up_blocks(16, 1101, 4096) == Blocks(4, 1024, 4)
    assert up_blocks(1, 154, 576) == Blocks(4, 1024, 4) and down_blocks(1, 1101, 4096) == Blocks(64, 64, 4, 8)


def test_disable_switch_makes_the_kernels_run_torch(monkeypatch):
    monkeypatch.setenv(dispatch.DISABLE_ENV, "1")
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # forcing Triton here would raise if it were chosen
    (q, k, v, kv_of_head), ref = gqa_inputs(16)
    assert_close(head_masked_attention(q, k, v, kv_of_head, 0.25, backend="triton"), ref)


def test_forcing_triton_on_cpu_without_the_interpreter_says_what_to_do(monkeypatch):
    monkeypatch.delenv(dispatch.DISABLE_ENV, raising=False)
    monkeypatch.setattr(dispatch, "triton_importable", lambda: True)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        dispatch.use_triton(torch.zeros(2), backend="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert dispatch.use_triton(torch.zeros(2), backend="triton")
    monkeypatch.setattr(dispatch, "triton_importable", lambda: False)
    with pytest.raises(RuntimeError, match="install it"):
        dispatch.use_triton(torch.zeros(2), backend="triton")


def test_kernels_import_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"  # import triton now raises ImportError
        "import torch\n"
        "from workbench.kernels import sparse_mlp, masked_matmul, head_attention, moe_dispatch\n"
        "from workbench.bench import kernels as benchmark, gpu_kernels\n"
        "from workbench.kernels.dispatch import use_triton\n"
        "assert not use_triton(torch.zeros(1))\n"
        "print(benchmark.triton_benchmark()['skipped'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "no CUDA device" in out.stdout


def test_triton_benchmark_skips_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the benchmark would run")
    assert "TRITON_INTERPRET=1" in triton_benchmark()["skipped"]


def test_gpu_benchmark_dry_run(triton_device):
    if triton_device != "cpu":
        pytest.skip("on a GPU, triton_benchmark() is the real run")
    from workbench.bench.gpu_kernels import gpu_rows

    rows = gpu_rows("cpu", small=True)
    assert not [r for r in rows if "error" in r]
    assert {r["kernel"] for r in rows} >= {
        "sparse_mlp_per_token",
        "nm_matmul",
        "head_masked_attention",
        "moe_dispatch",
    }
    assert max(r["rel_err"] for r in rows) < 1e-5
