"""GPU truth for the Triton kernels: parity in three dtypes, timings, replay and capture.

    PYTHONUNBUFFERED=1 python kernels/gpu_check.py --out gpu.json     # on a CUDA machine
    python kernels/gpu_check.py --small --out dry.json                # tiny shapes on the CPU (interpreter)

Runs from a checkout without installing anything: the lent GPU machine has torch, triton, transformers,
safetensors and xxhash but no transformer-lens, no network and no install of this package, so the script
maps `workbench` and `workbench.kernels` onto the checkout itself and builds its own random models.
Sections: (1) every kernel's parity against a float64 reference, compiled (TRITON_INTERPRET=0), in
float32, bfloat16 and float16; (2) timings against the torch path and the dense baseline at SmolLM2 and
7B-class shapes, each row with its speedup and its fraction of the 1/(1-s) limit; (3) a replay of small
Llama- and Mixtral-shaped models with the kernels on Triton against torch; (4) capture throughput of a
plain forward against forwards with hooks capturing every layer's MLP activations; (5) the repository's
own kernel parity tests (tests/unit/test_kernels.py) under pytest, compiled. Each section records its
traceback instead of stopping the others, and the JSON is rewritten after every section.

Timings (see Timer): device times of CUDA-graph replays whose calls cycle through distinct weight copies,
so that weights come from HBM as in a model's forward, and eager times from `triton.testing.do_bench`
(L2 flushed before each call). Launch-shape sweeps time each kernel alone under other tile sizes. The
H200 reports are kernels/gpu_results_h200*.json; RESULTS.md ("GPU (H200)") reads them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import types
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent  # the checkout's kernels/ folder
REPO = HERE.parent


def _package(name: str, folder: Path) -> types.ModuleType:
    """An empty package `name` whose submodules load from `folder` (its __init__, if any, is not run)."""
    module = types.ModuleType(name)
    module.__path__ = [str(folder)]
    module.__package__ = name
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)
    return module


def bootstrap() -> None:
    """Make `workbench`, `workbench.kernels` and `workbench.probes` importable from this checkout.

    Works installed or not, with or without `kernels/__init__.py` or the workbench/kernels link: the
    top-level folders are never put on sys.path (a bare `kernels` is Hugging Face's distribution).
    `workbench.replay` is mapped without running its __init__, which imports the widgets' charting.
    """
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
    try:
        import workbench

        if Path(workbench.__file__).resolve().parent != REPO / "workbench":
            raise ImportError("another workbench is installed")
    except ImportError:
        for name in [n for n in sys.modules if n == "workbench" or n.startswith("workbench.")]:
            del sys.modules[name]
        _package("workbench", REPO / "workbench")
    for sub, folder in (("kernels", HERE), ("probes", REPO / "probes")):
        try:
            importlib.import_module(f"workbench.{sub}.{'dispatch' if sub == 'kernels' else 'base'}")
        except ImportError:
            _package(f"workbench.{sub}", folder)
    if "workbench.replay" not in sys.modules:
        _package("workbench.replay", REPO / "workbench" / "replay")


# ---- set up before torch and triton are imported (the interpreter must be chosen first) ----

ARGS = argparse.Namespace()
REPORT: dict = {"sections": {}, "errors": {}}
START = time.perf_counter()


def elapsed() -> float:
    return time.perf_counter() - START


def log(*parts: object) -> None:
    print(f"[{elapsed():6.1f} s]", *parts, flush=True)


def save() -> None:
    if ARGS.out:
        Path(ARGS.out).parent.mkdir(parents=True, exist_ok=True)
        Path(ARGS.out).write_text(json.dumps(REPORT, indent=1, default=str))


def section(name: str, fn: Callable[[], object]) -> None:
    """Run one section; its result or its traceback goes into the report, which is saved right away."""
    if elapsed() > ARGS.budget_s:
        REPORT["sections"][name] = {"skipped": f"time budget of {ARGS.budget_s} s spent"}
        log(f"== {name}: skipped (budget)")
        save()
        return
    log(f"== {name}")
    t0 = time.perf_counter()
    try:
        REPORT["sections"][name] = fn()
    except Exception:
        REPORT["errors"][name] = traceback.format_exc()
        log(f"!! {name} failed:\n{REPORT['errors'][name]}")
    REPORT.setdefault("seconds", {})[name] = round(time.perf_counter() - t0, 2)
    save()


# ---- helpers (import torch lazily: main() sets TRITON_INTERPRET first) ----


def _torch():
    import torch

    return torch


def rel_err(y, ref) -> float:
    """‖y − ref‖ / ‖ref‖ in float64 (NaN or inf anywhere gives inf)."""
    torch = _torch()
    y64, r64 = y.double(), ref.double()
    if not bool(torch.isfinite(y64).all()):
        return math.inf
    return float((y64 - r64).norm() / r64.norm().clamp_min(1e-30))


TOL = {"float32": 1e-5, "bfloat16": 1.6e-2, "float16": 2e-3}


def poison(device: str) -> None:
    """Leave NaN-filled blocks in the caching allocator, so an output element a kernel never writes shows."""
    torch = _torch()
    if device == "cuda":
        for n in (1 << 17, 1 << 24):  # a small-pool and a large-pool block
            torch.full((n,), float("nan"), device=device)


# ---- (1) parity ----


def parity_rows(device: str, small: bool) -> list[dict]:
    torch = _torch()
    rows: list[dict] = []
    dtypes = [torch.float32] if small else [torch.float32, torch.bfloat16, torch.float16]
    for dtype in dtypes:
        for case in (_parity_mlp, _parity_nm, _parity_block, _parity_attention, _parity_moe):
            torch.manual_seed(0)
            try:
                rows.extend(case(device, dtype, small))
            except Exception:
                rows.append(
                    {
                        "kernel": case.__name__,
                        "dtype": str(dtype),
                        "ok": False,
                        "error": traceback.format_exc(),
                    }
                )
    for r in rows:
        flag = "ok " if r.get("ok") else "BAD"
        log(f"  {flag} {r['kernel']:24} {r.get('case', ''):38} {r['dtype']:9} err {r.get('rel_err', '-')}")
    return rows


def _row(kernel: str, case: str, dtype, y, ref, y_torch=None) -> dict:
    """ok: finite, right shape and dtype, and within the dtype's tolerance or twice the torch path's error."""
    name = str(dtype).removeprefix("torch.")
    err = rel_err(y, ref)
    torch_err = None if y_torch is None else rel_err(y_torch, ref)
    tol = TOL[name]
    ok = y.shape == ref.shape and y.dtype == dtype and err <= max(tol, 2 * (torch_err or 0.0))
    return {"kernel": kernel, "case": case, "dtype": name, "rel_err": err, "torch_rel_err": torch_err} | {
        "tol": tol,
        "ok": bool(ok),
    }


def _parity_mlp(device: str, dtype, small: bool) -> list[dict]:
    torch = _torch()
    from workbench.kernels.sparse_mlp import MlpParams, down_project_per_token, sparse_mlp_per_token

    D, DM, T, K = (40, 64, 3, 20) if small else (200, 700, 5, 77)
    pool = int(DM * 0.6)  # neurons >= pool are never listed: NaN there must not reach the output
    kinds = [(True, False, "silu"), (False, True, "relu"), (False, False, "gelu_new"), (True, True, "gelu")]
    if dtype != torch.float32:
        kinds = kinds[:2]
    rows = []
    for gated, bias, act in kinds:
        w = lambda *s: torch.randn(*s, device=device, dtype=torch.float64) / s[-1] ** 0.5  # noqa: E731
        p64 = MlpParams(
            w_in=w(DM, D), b_in=w(DM) if bias else None, w_gate=w(DM, D) if gated else None,
            w_out=w(DM, D), b_out=w(D) if bias else None, act=act,
        )  # fmt: skip
        p = MlpParams(
            **{f: _cast(getattr(p64, f), dtype) for f in ("w_in", "b_in", "w_gate", "w_out", "b_out")},
            act=act,
        )
        unlisted = torch.arange(pool, DM, device=device)
        bad = MlpParams(
            **{f: _nan_rows(getattr(p, f), unlisted) for f in ("w_in", "w_gate", "w_out")},
            b_in=p.b_in, b_out=p.b_out, act=act,
        )  # fmt: skip
        idx = torch.rand(T, pool, device=device).argsort(1)[:, :K]
        idx[0, K // 2 :] = -1
        idx[1, 1] = idx[1, 0]  # a neuron listed twice counts twice
        if T > 2:
            idx[2] = -1  # a token with no neuron
        x = torch.randn(T, D, device=device, dtype=dtype)
        ref = _per_token_ref(x.double(), _as64(p), idx)
        case = f"{'gated ' if gated else ''}{act}{' bias' if bias else ''} T={T} d={D} d_mlp={DM} k={K}"
        poison(device)
        y = sparse_mlp_per_token(x, bad, idx, backend="triton")
        rows.append(
            _row(
                "sparse_mlp_per_token", case, dtype, y, ref, sparse_mlp_per_token(x, p, idx, backend="torch")
            )
        )
        rows.extend(_parity_fused(case, dtype, x, p, bad, idx, ref))
        a_sel = torch.randn(T, K, device=device, dtype=dtype)
        ref_down = _down_ref(a_sel.double(), idx, _as64(p))
        poison(device)
        y = down_project_per_token(a_sel, idx, bad, backend="triton")
        rows.append(
            _row(
                "down_project_per_token",
                case,
                dtype,
                y,
                ref_down,
                down_project_per_token(a_sel, idx, p, backend="torch"),
            )
        )
    if dtype == torch.float32:  # the split row-sum and other launch shapes compute the same thing
        from workbench.kernels._triton_sparse_mlp import Blocks, triton_down_project, triton_sparse_mlp

        for up, down in (
            (Blocks(8, 16, 2), Blocks(16, 32, 2, 3)),
            (Blocks(16, 128, 8), Blocks(64, 16, 4, 2)),
            (Blocks(8, 1024, 8), Blocks(128, 128, 8, 4)),
            (Blocks(4, 2048, 8), Blocks(64, 256, 8, 1)),
        ):
            poison(device)
            y = triton_sparse_mlp(x, bad, idx, up, down)
            rows.append(_row("sparse_mlp_per_token", f"blocks up={up} down={down}", dtype, y, ref))
            y = triton_down_project(a_sel, idx, bad, down)
            rows.append(_row("down_project_per_token", f"blocks {down}", dtype, y, ref_down))
    return rows


def _parity_fused(case, dtype, x, p, bad, idx, ref, more: bool = True) -> list[dict]:
    """The fused kernel (what the per-token call runs for few tokens) and the two kernels, side by side, on
    NaN-poisoned unlisted rows: whole rows, rows walked in column blocks, and the in-kernel cast."""
    from workbench.kernels._triton_sparse_mlp import (
        FusedBlocks,
        fused_blocks,
        triton_sparse_mlp_fused,
        triton_sparse_mlp_two_kernels,
    )
    from workbench.kernels.sparse_mlp import sparse_mlp_per_token

    T, k = idx.shape
    D = x.shape[1]
    y_torch = sparse_mlp_per_token(x, p, idx, backend="torch")
    rows = []
    poison(x.device.type)
    rows.append(
        _row("sparse_mlp_two_kernels", case, dtype, triton_sparse_mlp_two_kernels(x, bad, idx), ref, y_torch)
    )
    default = fused_blocks(T, k, D)
    variants = (FusedBlocks(2, 64, 2, 6), FusedBlocks(8, 32, 4, 8, True)) if more else ()
    for fb in (default, replace(default, cast=True), *variants):
        poison(x.device.type)
        y = triton_sparse_mlp_fused(x, bad, idx, fb)
        rows.append(_row("sparse_mlp_fused", f"{case} {fb}", dtype, y, ref, y_torch))
    return rows


def _parity_fused_wide(device: str, small: bool) -> list[dict]:
    """The fused kernel at the launches the timed shapes get (whole 4096-wide rows, 8 warps; 576 wide), on
    NaN-poisoned unlisted rows, in float32 and bfloat16; and the in-kernel cast repeated, against its own
    float32 result, to catch a token's last program casting before every add has landed."""
    torch = _torch()
    from workbench.kernels._triton_sparse_mlp import fused_blocks, triton_sparse_mlp_fused
    from workbench.kernels.sparse_mlp import MlpParams

    rows = []
    shapes = (
        [(40, 96, 1, 30)] if small else [(4096, 2048, 1, 205), (4096, 2048, 4, 205), (576, 1536, 16, 154)]
    )
    for D, DM, T, K in shapes:
        for dtype in (torch.float32, torch.bfloat16):
            torch.manual_seed(0)
            w = lambda *s: torch.randn(*s, device=device, dtype=torch.float64) / s[-1] ** 0.5  # noqa: E731
            p64 = MlpParams(w_in=w(DM, D), w_gate=w(DM, D), w_out=w(DM, D), act="silu")
            p = MlpParams(
                w_in=p64.w_in.to(dtype), w_gate=p64.w_gate.to(dtype), w_out=p64.w_out.to(dtype), act="silu"
            )
            pool = DM // 2
            unlisted = torch.arange(pool, DM, device=device)
            bad = MlpParams(
                **{f: _nan_rows(getattr(p, f), unlisted) for f in ("w_in", "w_gate", "w_out")}, act="silu"
            )
            idx = torch.rand(T, pool, device=device).argsort(1)[:, :K]
            idx[0, -3:] = -1
            x = torch.randn(T, D, device=device, dtype=dtype)
            ref = _per_token_ref(x.double(), _as64(p), idx)
            case = f"gated silu T={T} d={D} d_mlp={DM} k={K}"
            rows.extend(_parity_fused(case, dtype, x, p, bad, idx, ref, more=False))
            if dtype == torch.bfloat16:
                fb = replace(fused_blocks(T, K, D), cast=True)
                exact = triton_sparse_mlp_fused(x.float(), p, idx, fb)  # float32: no cast, same sums
                worst = 0.0
                for _ in range(3 if small else 200):
                    poison(device)
                    y = triton_sparse_mlp_fused(x, bad, idx, fb).float()
                    worst = max(worst, float((y - exact).abs().max() / exact.abs().max()))
                ok = math.isfinite(worst) and worst < 1e-2  # bf16 rounding of x and the output only
                rows.append(
                    {"kernel": "sparse_mlp_fused", "case": f"{case} cast in kernel x{3 if small else 200}",
                     "dtype": "bfloat16", "rel_err": worst, "tol": 1e-2, "ok": ok}
                )  # fmt: skip
    return rows


def _cast(t, dtype):
    return None if t is None else t.to(dtype)


def _as64(p):
    from workbench.kernels.sparse_mlp import MlpParams

    f = lambda t: None if t is None else t.double()  # noqa: E731
    return MlpParams(
        w_in=f(p.w_in), b_in=f(p.b_in), w_gate=f(p.w_gate), w_out=f(p.w_out), b_out=f(p.b_out), act=p.act
    )


def _nan_rows(t, rows):
    return None if t is None else t.index_fill(0, rows, float("nan"))


def _per_token_ref(x, p, idx):
    """y_t = sum_j a[t, idx_tj] w_out[idx_tj] + b_out, by the definition (float64)."""
    from workbench.kernels.sparse_mlp import activations

    safe = idx.clamp_min(0)
    a = activations(x, p).gather(1, safe) * (idx >= 0)
    y = (a[:, :, None] * p.w_out[safe]).sum(1)
    return y if p.b_out is None else y + p.b_out


def _down_ref(a_sel, idx, p):
    safe = idx.clamp_min(0)
    y = ((a_sel * (idx >= 0))[:, :, None] * p.w_out[safe]).sum(1)
    return y if p.b_out is None else y + p.b_out


def _nm_mask(N: int, K: int, n: int, m: int, device: str):
    torch = _torch()
    top = torch.rand(N, K // m, m, device=device).topk(n, -1).indices
    mask = torch.zeros(N, K // m, m, dtype=torch.bool, device=device).scatter_(-1, top, True)
    mask[0, 0] = False  # a group with fewer than n kept: padding slots
    mask[3, 2, :] = False
    mask[3, 2, 0] = True
    return mask.view(N, K)


def _parity_nm(device: str, dtype, small: bool) -> list[dict]:
    """Both N:M kernels: the few-token one (T <= 16, also with another launch) and the tiled one."""
    torch = _torch()
    from workbench.kernels._triton_masked_matmul import GemvBlocks, triton_nm_matmul
    from workbench.kernels.masked_matmul import nm_compress, nm_matmul

    N, K = (48, 96) if small else (100, 200)
    rows = []
    for n, m in ((2, 4), (1, 4), (2, 8)):
        w = torch.randn(N, K, device=device, dtype=torch.float64) / K**0.5
        b = torch.randn(N, device=device, dtype=torch.float64).to(dtype)
        mask = _nm_mask(N, K, n, m, device)
        nmw = nm_compress(w.to(dtype), mask, n, m)
        for T in (5, 37):
            x = torch.randn(T, K, device=device, dtype=dtype)
            ref = x.double() @ (w.to(dtype).double() * mask).T + b.double()
            poison(device)
            y = nm_matmul(x, nmw, b, backend="triton")
            case = f"{n}:{m} T={T} N={N} K={K} bias ({'gemv' if T <= 16 else 'tile'})"
            rows.append(_row("nm_matmul", case, dtype, y, ref, nm_matmul(x, nmw, b, backend="torch")))
            if T == 5 and dtype == torch.float32:
                poison(device)
                y = triton_nm_matmul(x, nmw, b, GemvBlocks(8, 32, 2))
                rows.append(_row("nm_matmul", f"{case} GemvBlocks(8, 32, 2)", dtype, y, ref))
    return rows


def _parity_block(device: str, dtype, small: bool) -> list[dict]:
    torch = _torch()
    from workbench.kernels.masked_matmul import BlockMaskedWeight, block_masked_matmul

    T, N, K = (5, 80, 72) if small else (37, 100, 200)
    w = torch.randn(N, K, device=device, dtype=torch.float64) / K**0.5
    mask = torch.rand(N, K, device=device) < 0.3
    mask[:32, 32:64] = False
    mask[64:, :] = False
    mask[32:64, 64:] = False
    x = torch.randn(T, K, device=device, dtype=dtype)
    rows = []
    for bias in (None, torch.randn(N, device=device, dtype=torch.float64)):
        b = None if bias is None else bias.to(dtype)
        ref = x.double() @ (w.to(dtype).double() * mask).T + (0 if b is None else b.double())
        bw = BlockMaskedWeight.from_mask(w.to(dtype), mask)
        bad = BlockMaskedWeight.from_mask(w.to(dtype), mask)
        empty = (~bad.occupancy).repeat_interleave(32, 0).repeat_interleave(32, 1)[:N, :K]
        bad.weight.masked_fill_(empty, float("nan"))  # tiles the kernel must never read
        poison(device)
        y = block_masked_matmul(x, bad, b, backend="triton")
        case = f"T={T} N={N} K={K} 30% kept, empty 32x32 tiles NaN{' bias' if b is not None else ''}"
        rows.append(
            _row("block_masked_matmul", case, dtype, y, ref, block_masked_matmul(x, bw, b, backend="torch"))
        )
    return rows


def _attention_ref(q, k, v, kv_of_head, scale):
    """Causal attention in float64 by the definition."""
    torch = _torch()
    kg, vg = k[:, kv_of_head].double(), v[:, kv_of_head].double()
    scores = q.double() @ kg.transpose(-1, -2) * scale
    T = q.shape[2]
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    return torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1) @ vg


def _parity_attention(device: str, dtype, small: bool) -> list[dict]:
    torch = _torch()
    from workbench.kernels.head_attention import head_masked_attention

    B, H, KV, T = (1, 6, 3, 37) if small else (2, 9, 3, 200)
    kept = torch.tensor([0, 1, 4, 5] if small else [0, 1, 7, 8], device=device)  # kv head 1 serves none
    kv_of_head = kept // (H // KV)
    rows = []
    dhs = (16, 24) if small else ((64, 128, 80) if dtype == torch.float32 else (64, 128))
    for dh in dhs:
        q = torch.randn(B, len(kept), T, dh, device=device, dtype=dtype)
        k, v = (torch.randn(B, KV, T, dh, device=device, dtype=dtype) for _ in range(2))
        ref = _attention_ref(q, k, v, kv_of_head, dh**-0.5)
        y_torch = head_masked_attention(q, k, v, kv_of_head, dh**-0.5, backend="torch")
        k[:, 1], v[:, 1] = float("nan"), float("nan")
        poison(device)
        y = head_masked_attention(q, k, v, kv_of_head, dh**-0.5, backend="triton")
        case = f"B={B} T={T} dh={dh} {len(kept)} of {H} heads, GQA {H}/{KV}"
        rows.append(_row("head_masked_attention", case, dtype, y, ref, y_torch))
        if dtype == torch.float32 and not small and dh == 64:  # other launches compute the same thing
            from workbench.kernels._triton_head_attention import AttentionBlocks, triton_head_attention

            for cfg in (
                AttentionBlocks(128, 64, 8, 3),
                AttentionBlocks(32, 64, 4, 2),
                AttentionBlocks(128, 32, 4, 3),
            ):
                poison(device)
                y = triton_head_attention(q, k, v, kv_of_head, dh**-0.5, cfg)
                rows.append(_row("head_masked_attention", f"{case} {cfg}", dtype, y, ref))
    return rows


def _moe_ref(x, top_idx, top_w, gate_up, down):
    """y_t = sum_j w_tj down_e(silu(gate_e x_t) * up_e x_t), e = top_idx[t, j], in float64."""
    torch = _torch()
    dm = down.shape[2]
    y = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
    for e in range(gate_up.shape[0]):
        weight = (top_w.double() * (top_idx == e)).sum(1)
        if not bool(weight.any()):
            continue
        g, u = gate_up[e, :dm].double(), gate_up[e, dm:].double()
        h = torch.nn.functional.silu(x.double() @ g.T) * (x.double() @ u.T)
        y += weight[:, None] * (h @ down[e].double().T)
    return y


def _parity_moe(device: str, dtype, small: bool) -> list[dict]:
    torch = _torch()
    from workbench.kernels.moe_dispatch import moe_dispatch

    T, d, dm, E = (23, 40, 24, 5) if small else (300, 200, 150, 6)
    x = torch.randn(T, d, device=device, dtype=dtype)
    gate_up = (torch.randn(E, 2 * dm, d, device=device) / d**0.5).to(dtype)
    down = (torch.randn(E, d, dm, device=device) / dm**0.5).to(dtype)
    logits = torch.randn(T, E, device=device)
    logits[:, 3] = -1e4  # expert 3 receives nothing: its NaN weights must never be read
    top_w, top_idx = torch.softmax(logits, -1).topk(2, -1)
    top_w[2, 0] = 0.0
    top_idx[5, 1] = -1
    top_w[7] = 0.0
    top_w = top_w.to(dtype)
    ref = _moe_ref(x, top_idx, top_w, gate_up, down)
    y_torch = moe_dispatch(x, top_idx, top_w, gate_up, down, "silu", backend="torch")
    gate_up[3], down[3] = float("nan"), float("nan")
    poison(device)
    y = moe_dispatch(x, top_idx, top_w, gate_up, down, "silu", backend="triton")
    case = f"T={T} d={d} dm={dm} E={E} top-2, expert 3 NaN and unrouted, dropped assignments"
    rows = [_row("moe_dispatch", case, dtype, y, ref, y_torch)]
    if dtype == torch.float32 and not small:  # other launches compute the same thing
        from workbench.kernels._triton_moe import MoeBlocks, triton_moe

        for cfg in (MoeBlocks(64, 64, 64, 4), MoeBlocks(128, 128, 64, 8), MoeBlocks(32, 16, 64, 2)):
            poison(device)
            y = triton_moe(x, top_idx, top_w, gate_up, down, "silu", config=cfg)
            rows.append(_row("moe_dispatch", f"{case} {cfg}", dtype, y, ref))
    return rows


# ---- (2) timings ----


def ceilings(device: str) -> dict:
    """Copy bandwidth and bf16 matrix rate measured here (the ceilings the rows are read against)."""
    torch = _torch()
    if device != "cuda":
        return {"skipped": "CPU dry run"}
    ms = Timer(device).eager
    src = torch.empty(1 << 29, dtype=torch.uint8, device=device).random_(0, 255)  # 512 MiB
    copy_ms = ms(partial(torch.Tensor.copy_, torch.empty_like(src), src))
    mat = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    mm_ms = ms(partial(torch.mm, mat, mat))
    return {
        "copy_TBps_read_plus_write": 2 * (1 << 29) / copy_ms / 1e9,
        "bf16_matmul_TFLOPs": 2 * 8192**3 / mm_ms / 1e9,
    }


COLD_BYTES = 150e6  # what one graph touches at least: 2.5 times the H200's 60 MB L2, so weights come from HBM


def copies_for(bytes_read: float, cap: int = 256) -> int:
    """Distinct weight copies a graph cycles through so that its calls together read COLD_BYTES."""
    return max(1, min(cap, math.ceil(COLD_BYTES / max(bytes_read, 1.0))))


class Timer:
    """Device time of one call, two ways.

    graph: a CUDA graph of at least 8 calls cycling through distinct weight copies (so the weights come
    from HBM, as in a model's forward), replayed; median over replays, divided by the calls. No host
    launch cost: what the kernels cost on the device. None where the call cannot be captured (a sync).
    eager: triton.testing.do_bench, median, L2 flushed before each call; launches queue behind the
    flush, so this too is mostly device time, plus what a call waits on the host for (syncs).
    """

    def __init__(self, device: str) -> None:
        self.device = device

    def eager(self, fn: Callable[[], object]) -> float:
        if self.device != "cuda":
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1e3
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=ARGS.warmup_ms, rep=ARGS.rep_ms, return_mode="median"))

    def graph(self, fns: list[Callable[[], object]]) -> float | None:
        torch = _torch()
        if self.device != "cuda":
            return None
        calls = [fns[i % len(fns)] for i in range(max(8, len(fns)))]
        torch.cuda.synchronize()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for f in calls[: len(fns)]:  # warm: compiled kernels, allocator blocks
                f()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                for f in calls:
                    f()
        except Exception:
            torch.cuda.synchronize()
            return None
        graph.replay()
        torch.cuda.synchronize()
        times = []
        for _ in range(10):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / len(calls))
        del graph
        return sorted(times)[len(times) // 2]


def timing_rows(device: str, small: bool) -> list[dict]:
    torch = _torch()
    rows: list[dict] = []
    for case in (_time_mlp, _time_nm, _time_block, _time_attention, _time_moe):
        torch.manual_seed(0)
        if elapsed() > ARGS.budget_s:
            rows.append({"kernel": case.__name__, "skipped": "budget"})
            continue
        try:
            with torch.inference_mode():
                for row in case(device, small):
                    rows.append(row)
                    _print_timing(row)
        except Exception:
            rows.append({"kernel": case.__name__, "error": traceback.format_exc()})
            log(f"!! {case.__name__}:\n{rows[-1]['error']}")
        torch.cuda.empty_cache() if device == "cuda" else None
    rows.append({"kernel": "compiled", "stats": kernel_stats()})
    return rows


def kernel_stats() -> list[dict]:
    """Registers, spills and shared memory of every compiled specialisation (from Triton's caches)."""
    out = []
    names = {
        "_triton_sparse_mlp": ("_gather_dot_kernel", "_gather_sum_kernel", "_fused_mlp_kernel"),
        "_triton_masked_matmul": ("_nm_kernel", "_nm_gemv_kernel", "_block_masked_kernel"),
        "_triton_head_attention": ("_attention_kernel",),
        "_triton_moe": ("_gate_up_kernel", "_down_kernel"),
    }
    for module, kernels in names.items():
        mod = importlib.import_module(f"workbench.kernels.{module}")
        for name in kernels:
            try:
                for entry in getattr(mod, name).device_caches.values():
                    cache = entry[0] if isinstance(entry, tuple) else entry
                    for compiled in cache.values():
                        meta = getattr(compiled, "metadata", None)
                        out.append(
                            {
                                "kernel": name,
                                "n_regs": getattr(compiled, "n_regs", None),
                                "n_spills": getattr(compiled, "n_spills", None),
                                "shared": getattr(meta, "shared", None),
                                "num_warps": getattr(meta, "num_warps", None),
                                "num_stages": getattr(meta, "num_stages", None),
                                "constants": str(getattr(meta, "constants", ""))[:200],
                            }
                        )
            except Exception as error:
                out.append({"kernel": name, "error": f"{type(error).__name__}: {error}"})
    return out


def _print_timing(r: dict) -> None:
    f = lambda v, p=3: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
    if "stats" in r:
        return
    log(
        f"  {r['kernel']:22} {r.get('shape', '') + ' ' + r.get('blocks', ''):52} "
        f"tr {f(r.get('triton_ms'))} to {f(r.get('torch_ms'))} base {f(r.get('baseline_ms'))} "
        f"x{f(r.get('speedup'), 2)} frac {f(r.get('fraction_of_limit'), 2)} "
        f"eager tr {f(r.get('triton_eager_ms'))} to {f(r.get('torch_eager_ms'))} "
        f"base {f(r.get('baseline_eager_ms'))} err {f(r.get('rel_err'), 5)}"
    )


Maker = Callable[[int], object]  # copy index -> the call on that copy


def _timed(
    kernel, shape, dtype, device, copies, triton_fn: Maker, torch_fn, baseline_fn, limit=None, **extra
):
    """One row: the Triton kernel, its torch path and the dense baseline it replaces, each timed both ways.

    Each function takes the index of the weight copy it runs on. speedup = baseline / triton (graph
    times where both captured, else eager); fraction_of_limit = speedup / limit, limit = 1 / (1 - s).
    rel_err: max |triton - torch path| / max |torch path|.
    """
    row = {"kernel": kernel, "shape": shape, "dtype": str(dtype).removeprefix("torch."), "copies": copies}
    try:
        return _fill(row, Timer(device), copies, triton_fn, torch_fn, baseline_fn, limit, extra)
    except Exception:  # one row's failure leaves the next rows to run
        return row | {"error": traceback.format_exc()}


def _fill(row, timer, copies, triton_fn, torch_fn, baseline_fn, limit, extra) -> dict:
    y = triton_fn(0)
    if torch_fn is not None:
        ref = torch_fn(0).float()
        row["rel_err"] = float((y.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
    fns = {"triton": triton_fn, "torch": torch_fn, "baseline": baseline_fn} | extra
    for name, fn in fns.items():
        row[f"{name}_ms"] = row[f"{name}_eager_ms"] = None
        if fn is None:
            continue
        try:
            row[f"{name}_eager_ms"] = timer.eager(partial(fn, 0))
            if not ARGS.no_graphs:
                row[f"{name}_ms"] = timer.graph([partial(fn, i) for i in range(copies)])
        except Exception as error:
            row[f"{name}_error"] = f"{type(error).__name__}: {error}"

    def ratio(num: str, den: str) -> tuple[float | None, str]:
        """num / den, from graph times where both captured, else eager times."""
        key = "ms" if row[f"{num}_ms"] is not None and row[f"{den}_ms"] is not None else "eager_ms"
        a, b = row[f"{num}_{key}"], row[f"{den}_{key}"]
        return (a / b if a and b else None), ("graph" if key == "ms" else "eager")

    row["speedup"], row["timing"] = ratio("baseline", "triton")
    row["limit"] = limit
    row["fraction_of_limit"] = row["speedup"] / limit if limit and row["speedup"] else None
    row["speedup_vs_torch_path"], row["vs_torch_timing"] = ratio("torch", "triton")
    return row


def per_copy(fn: Callable, *args, **kwargs) -> Maker:
    """i -> fn(*args, **kwargs) with each list among args replaced by its i-th element (the i-th copy)."""

    def call(i: int):
        return fn(*(a[i] if isinstance(a, list) else a for a in args), **kwargs)

    return call


def _masked_dense(x, p, keep):
    """The torch way to apply per-token sets on a GPU: dense activations, masked, dense down projection."""
    from workbench.kernels.sparse_mlp import activations

    return (activations(x, p) * keep) @ p.w_out


def _down_dense(a, p):
    return a @ p.w_out


def _scatter_gemm(a_sel, idx, p):
    """Down projection of per-token sets as scatter + dense GEMM (the GEMM branch of the torch path)."""
    a = a_sel.new_zeros(a_sel.shape[0], p.d_mlp).scatter_(1, idx, a_sel)
    return a @ p.w_out


def _mlp_copies(d: int, dm: int, n: int, device: str, dtype) -> list:
    torch = _torch()
    from workbench.kernels.sparse_mlp import MlpParams

    def w():
        return (torch.randn(dm, d, device=device) / d**0.5).to(dtype)

    return [MlpParams(w_in=w(), w_gate=w(), w_out=w(), act="silu") for _ in range(n)]


def _time_mlp(device: str, small: bool):
    """Gated SiLU MLPs (SmolLM2 576/1536, 7B-class 4096/11008) at 50/90/97 % of neurons skipped."""
    torch = _torch()
    from workbench.kernels.sparse_mlp import (
        down_project_per_token,
        gather_neurons,
        mlp_dense,
        sparse_mlp_per_token,
    )

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    shapes = {"tiny": (40, 64)} if small else {"smollm2": (576, 1536), "7b": (4096, 11008)}
    token_counts = (1, 3) if small else (1, 16, 64)
    for name, (d, dm) in shapes.items():
        full_bytes = 3 * d * dm * torch.empty(0, dtype=dtype).element_size()
        for s in (0.5, 0.9, 0.97):
            k = max(1, round((1 - s) * dm))
            n = 1 if small else copies_for(full_bytes * (1 - s))
            ps = _mlp_copies(d, dm, n, device, dtype)
            for T in token_counts + ((256,) if name == "7b" and s == 0.9 else ()):
                x = torch.randn(T, d, device=device, dtype=dtype)
                idx = torch.rand(T, dm, device=device).topk(k, dim=1).indices
                keep = torch.zeros(T, dm, dtype=dtype, device=device).scatter_(1, idx, 1.0)
                listed = keep.amax(0).sum().item()
                shape = f"{name} d={d} d_mlp={dm} s={s} T={T} k={k}"
                dense = per_copy(mlp_dense, x, ps)
                row = _timed(
                    "sparse_mlp_per_token", shape, dtype, device, n,
                    per_copy(sparse_mlp_per_token, x, ps, idx, backend="triton"),
                    per_copy(sparse_mlp_per_token, x, ps, idx, backend="torch"),
                    dense, 1 / (1 - s), torch_masked_dense=per_copy(_masked_dense, x, ps, keep),
                )  # fmt: skip
                row["union_limit"] = dm / listed  # d_mlp over the rows any token lists: the T-token bound
                yield row
                if token_counts[0] == T:  # the shared set's small MLP does not depend on T much: one T
                    shared = [gather_neurons(p, idx[0].sort().values) for p in ps]
                    small_mlp = per_copy(mlp_dense, x, shared)
                    yield _timed(
                        "sparse_mlp_shared", shape, dtype, device, n, small_mlp, None, dense, 1 / (1 - s)
                    )
                if s == 0.9:  # the top-k replay path: dense activations, sparse down projection only
                    a_sel = torch.randn(T, k, device=device, dtype=dtype)
                    a_dense = torch.zeros(T, dm, device=device, dtype=dtype).scatter_(1, idx, a_sel)
                    yield _timed(
                        "down_project_per_token", shape, dtype, device, n,
                        per_copy(down_project_per_token, a_sel, idx, ps, backend="triton"),
                        per_copy(down_project_per_token, a_sel, idx, ps, backend="torch"),
                        per_copy(_down_dense, a_dense, ps), 1 / (1 - s),
                        torch_scatter_gemm=per_copy(_scatter_gemm, a_sel, idx, ps),
                    )  # fmt: skip
                if s == 0.9 and T in (1, 16) and not ARGS.no_sweep and not small:
                    yield from _sweep_mlp(device, shape, dtype, x, ps, idx, n)


UP_CONFIGS = ((8, 256, 4), (8, 512, 8), (8, 1024, 8), (16, 512, 8), (4, 1024, 4), (4, 2048, 8), (32, 64, 4))
DOWN_CONFIGS = (
    (32, 64, 4, 1), (64, 64, 4, 8), (64, 128, 8, 8), (64, 128, 4, 16), (128, 64, 8, 8), (64, 256, 8, 4),
    (128, 128, 8, 4), (32, 128, 4, 1), (64, 256, 8, 1),
)  # fmt: skip


def _sweep_mlp(device, shape, dtype, x, ps, idx, n):
    """Launch shapes of the two per-token kernels, each timed alone (graphs; rel_err against the default)."""
    torch = _torch()
    from workbench.kernels._triton_sparse_mlp import Blocks, triton_down_project, triton_gather_activations

    T, k = idx.shape
    timer = Timer(device)
    ref_up = triton_gather_activations(x, ps[0], idx)
    a_sel = torch.randn(T, k, device=x.device)  # float32, as kernel 1 hands it to kernel 2
    ref_down = triton_down_project(a_sel, idx, ps[0]).float()
    configs = [("up", c) for c in UP_CONFIGS] + [("down", c) for c in DOWN_CONFIGS]
    for which, cfg in configs:
        blocks = Blocks(*cfg)
        row = {"kernel": f"sweep_sparse_mlp_{which}", "shape": shape, "blocks": str(blocks)}
        try:
            if which == "up":
                fns = [partial(triton_gather_activations, x, ps[i], idx, blocks) for i in range(n)]
                ref = ref_up
            else:
                fns = [partial(triton_down_project, a_sel, idx, ps[i], blocks) for i in range(n)]
                ref = ref_down
            y = fns[0]().float()
            row["rel_err"] = float((y - ref).abs().max() / ref.abs().max())
            row["triton_ms"] = timer.graph(fns)
        except Exception as error:
            row["error"] = f"{type(error).__name__}: {error}"
        yield row


# ---- the per-token sparse MLP as whole calls (`--only sparse_mlp`) ----


def sparse_mlp_section(device: str, small: bool) -> dict:
    """Parity of the per-token MLP kernels (fused and two-kernel paths, NaN-poisoned rows) and the whole
    per-token call timed against the dense MLP: the focused check of the fused kernel. Parts in order of
    need, each saved as it ends and skipped once the time budget is spent: parity at the timed launches,
    the timings, the fused kernel's launch sweep, parity in three dtypes over every activation."""
    torch = _torch()
    out: dict = {"parity": [], "timings": []}
    REPORT["sections"]["sparse_mlp"] = out

    def parity_all_dtypes():
        for dtype in [torch.float32] if small else [torch.float32, torch.bfloat16, torch.float16]:
            if elapsed() > ARGS.budget_s:
                yield {"kernel": "part", "dtype": str(dtype), "skipped": "budget"}
                continue
            torch.manual_seed(0)
            yield from _parity_mlp(device, dtype, small)

    parts = (
        ("parity", lambda: _parity_fused_wide(device, small)),
        ("timings", lambda: _time_mlp_calls(device, small)),
        ("timings", lambda: _sweep_fused(device, small)),
        ("parity", parity_all_dtypes),
    )
    for key, part in parts:
        torch.manual_seed(0)
        if elapsed() > ARGS.budget_s:
            out[key].append({"kernel": "part", "skipped": f"budget spent at {elapsed():.0f} s"})
            continue
        try:
            with torch.inference_mode():
                for row in part():
                    out[key].append(row)
                    _print_call_row(row) if key == "timings" else _print_parity_row(row)
                    save()
        except Exception:
            out[key].append({"kernel": "part", "error": traceback.format_exc()})
            log(f"!! sparse_mlp {key}:\n{out[key][-1]['error']}")
        torch.cuda.empty_cache() if device == "cuda" else None
        save()
    out["compiled"] = [r for r in kernel_stats() if "mlp" in r["kernel"] or "gather" in r["kernel"]]
    out["parity_failures"] = sum(1 for r in out["parity"] if not r.get("ok") and "skipped" not in r)
    return out


def _print_parity_row(r: dict) -> None:
    flag = "ok " if r.get("ok") else "BAD"
    case, err = r.get("case", "")[:70], r.get("rel_err", "-")
    log(f"  {flag} {r['kernel']:22} {case:70} {r.get('dtype', ''):9} err {err}")


CALL_PATHS = ("call", "fused", "fused_cast", "two_kernels", "torch", "baseline")


def _print_call_row(r: dict) -> None:
    f = lambda v, p=3: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
    if "shape" not in r:
        return
    if r["kernel"] == "sweep_fused_mlp":
        blocks = r.get("blocks", "")
        log(f"  sweep {r['shape']:40} {blocks:60} {f(r.get('ms'))} ms err {f(r.get('rel_err'), 5)}")
        return
    times = " ".join(f"{n} {f(r.get(f'{n}_ms'))}" for n in CALL_PATHS)
    fracs = " ".join(
        f"{n} {f(r.get(f'{n}_of_limit'), 2)}" for n in ("call", "fused", "fused_cast", "two_kernels")
    )
    log(f"  {r['shape']:48} {times} | of limit: {fracs} | err {f(r.get('rel_err'), 4)}")


def _time_mlp_calls(device: str, small: bool):
    """The whole per-token call, each path timed as the call it is (zeroing, casts and all): CUDA graphs of
    calls cycling through weight copies (weights from HBM), and eager do_bench. Gated SiLU at SmolLM2 and
    7B-class shapes, 1/4/16 tokens, 50/90/97 % skipped; a non-gated ReLU 7B-class MLP at 90 %.

    call: sparse_mlp_per_token(backend="triton") as dispatched (the fused kernel up to
    dispatch.FUSED_MAX_TOKENS); fused / fused_cast: the fused kernel, cast by torch / by its last program;
    two_kernels: activations then row sum; torch: the torch path on a GPU (dense activations, one GEMM);
    baseline: the dense MLP (F.linear). <path>_of_limit = (baseline / path) / (1 / (1 - s))."""
    torch = _torch()
    from workbench.kernels._triton_sparse_mlp import (
        fused_blocks,
        triton_sparse_mlp_fused,
        triton_sparse_mlp_two_kernels,
    )
    from workbench.kernels.dispatch import fused_mlp_pays, triton_wins_per_token_mlp
    from workbench.kernels.sparse_mlp import MlpParams, mlp_dense, sparse_mlp_per_token

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    shapes = {"tiny": (40, 64)} if small else {"smollm2": (576, 1536), "7b": (4096, 11008)}
    cases = [(name, gated, s) for name in shapes for gated in (True,) for s in (0.5, 0.9, 0.97)]
    cases += [("7b" if not small else "tiny", False, 0.9)]
    timer = Timer(device)
    for name, gated, s in cases:
        d, dm = shapes[name]
        n_mats = 3 if gated else 2
        full_bytes = n_mats * d * dm * torch.empty(0, dtype=dtype).element_size()
        k = max(1, round((1 - s) * dm))
        n = 1 if small else copies_for(full_bytes * (1 - s))

        def w():
            return (torch.randn(dm, d, device=device) / d**0.5).to(dtype)  # noqa: B023

        act = "silu" if gated else "relu"
        ps = [MlpParams(w_in=w(), w_gate=w() if gated else None, w_out=w(), act=act) for _ in range(n)]
        for T in (1, 4, 16):
            if elapsed() > ARGS.budget_s:
                yield {"kernel": "sparse_mlp_call", "skipped": f"{name} s={s} T={T}: budget"}
                continue
            x = torch.randn(T, d, device=device, dtype=dtype)
            idx = torch.rand(T, dm, device=device).topk(k, dim=1).indices
            listed = torch.zeros(dm, dtype=torch.bool, device=device).index_fill_(0, idx.flatten(), True)
            cast = replace(fused_blocks(T, k, d), cast=True)
            fns = {
                "call": per_copy(sparse_mlp_per_token, x, ps, idx, backend="triton"),
                "fused": per_copy(triton_sparse_mlp_fused, x, ps, idx),
                "fused_cast": per_copy(triton_sparse_mlp_fused, x, ps, idx, cast),
                "two_kernels": per_copy(triton_sparse_mlp_two_kernels, x, ps, idx),
                "torch": per_copy(sparse_mlp_per_token, x, ps, idx, backend="torch"),
                "baseline": per_copy(mlp_dense, x, ps),
            }
            shape = f"{name} {'gated silu' if gated else 'relu'} s={s} T={T} k={k}"
            row = {
                "kernel": "sparse_mlp_call", "shape": shape, "d_model": d, "d_mlp": dm, "gated": gated,
                "skip": s, "tokens": T, "k": k, "dtype": str(dtype).removeprefix("torch."), "copies": n,
                "limit": 1 / (1 - s), "union_limit": dm / float(listed.sum()),
                "fused_blocks": str(fused_blocks(T, k, d)), "call_path": "fused" if fused_mlp_pays(T, k, d)
                else "two_kernels", "auto_takes_triton": triton_wins_per_token_mlp(T, k, dm),
            }  # fmt: skip
            try:
                ref = fns["torch"](0).float()
                scale = float(ref.abs().max().clamp_min(1e-30))
                row["rel_err"] = {
                    m: float((fns[m](0).float() - ref).abs().max()) / scale for m in CALL_PATHS[:4]
                }
                for m, fn in fns.items():
                    row[f"{m}_eager_ms"] = timer.eager(partial(fn, 0))
                    row[f"{m}_ms"] = (
                        None if ARGS.no_graphs else timer.graph([partial(fn, i) for i in range(n)])
                    )
                key = "ms" if row["baseline_ms"] is not None else "eager_ms"
                for m in CALL_PATHS[:5]:
                    t_m = row[f"{m}_{key}"]
                    row[f"{m}_speedup"] = row[f"baseline_{key}"] / t_m if t_m else None
                    row[f"{m}_of_limit"] = row[f"{m}_speedup"] / row["limit"] if t_m else None
                row["timing"] = "graph" if key == "ms" else "eager"
                row["rel_err_max"] = max(row["rel_err"].values())
            except Exception:
                row["error"] = traceback.format_exc()
            row["rel_err"], row["rel_err_by_path"] = row.get("rel_err_max"), row.get("rel_err")
            yield row
        del ps
        torch.cuda.empty_cache() if device == "cuda" else None


FUSED_CONFIGS = {  # FusedBlocks(j, d, warps, chunk (0: one wave), cast, per_sm); d capped at the row's width
    "wide": (
        (4, 4096, 8, 0, False, 1), (4, 4096, 8, 4), (4, 4096, 8, 8), (4, 4096, 8, 16),
        (4, 4096, 8, 0, False, 2), (2, 4096, 4, 0, False, 2), (2, 4096, 8, 0, False, 1),
        (4, 4096, 16, 0, False, 1), (8, 2048, 8, 0, False, 1), (4, 4096, 8, 0, True, 1),
    ),
    "narrow": (
        (4, 1024, 4, 0, False, 4), (4, 1024, 4, 4), (4, 1024, 4, 8), (8, 1024, 4, 8), (2, 1024, 2, 2),
        (4, 1024, 4, 16), (8, 1024, 8, 16), (2, 1024, 2, 0, False, 8), (4, 1024, 4, 0, True, 4),
    ),
}  # fmt: skip


def _sweep_fused(device: str, small: bool):
    """Launches of the fused kernel, each the whole fused call (zeroing and cast included), graphs only;
    gated SiLU at 90 %, 1/4/16 tokens; rel_err against the default launch."""
    torch = _torch()
    from workbench.kernels._triton_sparse_mlp import FusedBlocks, triton_sparse_mlp_fused
    from workbench.kernels.sparse_mlp import MlpParams

    if ARGS.no_sweep:
        return
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    shapes = {"tiny": (40, 64)} if small else {"smollm2": (576, 1536), "7b": (4096, 11008)}
    timer = Timer(device)
    for name, (d, dm) in shapes.items():
        k = round(0.1 * dm)
        n = 1 if small else copies_for(3 * d * dm * 2 * 0.1)
        ps = [
            MlpParams(
                **{
                    f: (torch.randn(dm, d, device=device) / d**0.5).to(dtype)
                    for f in ("w_in", "w_gate", "w_out")
                },
                act="silu",
            )
            for _ in range(n)
        ]
        configs = FUSED_CONFIGS["wide" if d > 1024 else "narrow"]
        for T in (1, 4, 16):
            if elapsed() > ARGS.budget_s:
                yield {"kernel": "sweep_fused_mlp", "skipped": f"{name} T={T}: budget"}
                continue
            x = torch.randn(T, d, device=device, dtype=dtype)
            idx = torch.rand(T, dm, device=device).topk(k, dim=1).indices
            ref = triton_sparse_mlp_fused(x, ps[0], idx).float()
            for cfg in configs:
                blocks = FusedBlocks(*cfg)
                row = {
                    "kernel": "sweep_fused_mlp",
                    "shape": f"{name} s=0.9 T={T} k={k}",
                    "blocks": str(blocks),
                }
                try:
                    fns = [partial(triton_sparse_mlp_fused, x, ps[i], idx, blocks) for i in range(n)]
                    row["rel_err"] = float((fns[0]().float() - ref).abs().max() / ref.abs().max())
                    row["ms"] = timer.graph(fns) if device == "cuda" else timer.eager(fns[0])
                except Exception as error:
                    row["error"] = f"{type(error).__name__}: {error}"
                yield row
        del ps
        torch.cuda.empty_cache() if device == "cuda" else None


def _time_nm(device: str, small: bool):
    """N:M against dense and torch's semi-structured 2:4 (cuSPARSELt, and CUTLASS) on the same weights."""
    torch = _torch()
    import torch.nn.functional as F

    from workbench.kernels._triton_masked_matmul import GemvBlocks, triton_nm_matmul
    from workbench.kernels.masked_matmul import nm_compress, nm_matmul, semi_structured_2to4

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    cases = [(3, 48, 96, 2, 4), (20, 48, 96, 2, 4)] if small else [
        *[(T, 11008, 4096, 2, 4) for T in (1, 4, 16, 64, 256, 2048)],
        (1, 11008, 4096, 1, 4), (16, 11008, 4096, 1, 4), (2048, 11008, 4096, 1, 4),
        (1, 1536, 576, 2, 4), (16, 1536, 576, 2, 4), (2048, 1536, 576, 2, 4),
    ]  # fmt: skip
    built: dict = {}
    for T, N, K, n, m in cases:
        if (N, K, n, m) not in built:
            built.clear()
            torch.cuda.empty_cache() if device == "cuda" else None
            copies = 1 if small else copies_for(N * K * n / m * 3, cap=64)  # values + one-byte offsets
            nmws, dense, semis, cutlass = [], [], [], []
            for _ in range(copies):
                w = (torch.randn(N, K, device=device) / K**0.5).to(dtype)
                nmws.append(nm_compress(w, _nm_mask(N, K, n, m, device), n, m))
                dense.append(nmws[-1].dense())
            if (n, m) == (2, 4) and device == "cuda":
                semis = [semi_structured_2to4(w) for w in dense]
                cutlass = _cutlass_2to4(dense)
            built[N, K, n, m] = (copies, nmws, dense, semis, cutlass)
        copies, nmws, dense, semis, cutlass = built[N, K, n, m]
        x = torch.randn(T, K, device=device, dtype=dtype)
        extra = {}
        if semis and semis[0] is not None:
            extra["semi_structured_2to4"] = per_copy(F.linear, x, semis)
        if cutlass:
            extra["semi_cutlass_2to4"] = per_copy(F.linear, x, cutlass)
        row = _timed(
            "nm_matmul", f"{n}:{m} T={T} N={N} K={K}", dtype, device, copies,
            per_copy(nm_matmul, x, nmws, backend="triton"), per_copy(nm_matmul, x, nmws, backend="torch"),
            per_copy(F.linear, x, dense), m / n, **extra,
        )  # fmt: skip
        row["kernel_used"] = "gemv" if T <= 16 else "tile"
        for v in extra:  # Triton against each 2:4 backend, timed the same way
            key = "ms" if row.get(f"{v}_ms") is not None and row.get("triton_ms") is not None else "eager_ms"
            if row.get(f"{v}_{key}") and row.get(f"triton_{key}"):
                row[f"speedup_vs_{v}"] = row[f"{v}_{key}"] / row[f"triton_{key}"]
                row[f"vs_{v}_timing"] = "graph" if key == "ms" else "eager"
        if (n, m) == (2, 4) and not semis and device == "cuda":
            row["semi_structured_2to4"] = "refused by torch here"
        yield row
        if T in (1, 16) and (N, n) == (11008, 2) and not ARGS.no_sweep and not small:
            timer = Timer(device)
            ref = nm_matmul(x, nmws[0], backend="triton").float()
            for cfg in ((16, 128, 4), (8, 256, 4), (32, 128, 4), (16, 256, 8), (64, 64, 4), (8, 512, 8)):
                g = GemvBlocks(*cfg)
                row = {"kernel": "sweep_nm_gemv", "shape": f"{n}:{m} T={T} N={N} K={K}", "blocks": str(g)}
                try:
                    fns = [partial(triton_nm_matmul, x, nmws[i], None, g) for i in range(copies)]
                    row["rel_err"] = float((fns[0]().float() - ref).abs().max() / ref.abs().max())
                    row["triton_ms"] = timer.graph(fns)
                except Exception as error:
                    row["error"] = f"{type(error).__name__}: {error}"
                yield row


def _cutlass_2to4(dense: list) -> list:
    """The same weights through torch's CUTLASS 2:4 kernels (the other semi-structured backend)."""
    try:
        from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

        SparseSemiStructuredTensor._FORCE_CUTLASS = True
        try:
            return [to_sparse_semi_structured(w) for w in dense]
        finally:
            SparseSemiStructuredTensor._FORCE_CUTLASS = False
    except Exception:
        return []


def _time_block(device: str, small: bool):
    """Block-skipping matmul: 0/50/75/90/97 % of the 32 x 32 tiles empty (the rest half kept)."""
    torch = _torch()
    import torch.nn.functional as F

    from workbench.kernels.masked_matmul import BlockMaskedWeight, block_masked_matmul

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    N, K, tile = (96, 128, 32) if small else (4096, 4096, 32)
    for empty in (0.0, 0.5, 0.75, 0.9, 0.97):
        copies = 1 if small else copies_for(N * K * 2 * (1 - empty), cap=32)
        ws, bws = [], []
        for _ in range(copies):
            w = (torch.randn(N, K, device=device) / K**0.5).to(dtype)
            tiles = torch.rand(N // tile, K // tile, device=device) >= empty
            tiles[0, 0] = True
            keep = tiles.repeat_interleave(tile, 0).repeat_interleave(tile, 1)
            mask = keep & (torch.rand(N, K, device=device) < 0.5)
            ws.append(w)
            bws.append(BlockMaskedWeight.from_mask(w, mask, block_n=tile, block_k=tile))
        live = float(bws[0].occupancy.float().mean())
        for T in (3,) if small else (1, 16, 256, 2048):
            x = torch.randn(T, K, device=device, dtype=dtype)
            yield _timed(
                "block_masked_matmul", f"T={T} N={N} K={K} {1 - live:.0%} of {tile}x{tile} tiles empty",
                dtype, device, copies, per_copy(block_masked_matmul, x, bws, backend="triton"),
                per_copy(block_masked_matmul, x, bws, backend="torch"), per_copy(F.linear, x, ws), 1 / live,
            )  # fmt: skip


def _time_attention(device: str, small: bool):
    """Kept-head causal attention against SDPA on the kept heads (the torch path) and on all heads."""
    torch = _torch()
    from workbench.kernels._triton_head_attention import AttentionBlocks, triton_head_attention
    from workbench.kernels.head_attention import head_masked_attention

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    cases = [(1, 6, 3, 40, 16, 3)] if small else [
        (8, 9, 3, 512, 64, 5), (4, 9, 3, 2048, 64, 5), (1, 9, 3, 4096, 64, 5),
        (8, 32, 8, 512, 128, 16), (4, 32, 32, 2048, 128, 16), (4, 32, 8, 2048, 128, 8),
    ]  # fmt: skip
    for B, H, KV, T, dh, n_kept in cases:
        kept = torch.randperm(H, device=device)[:n_kept].sort().values
        kv_of_head = kept // (H // KV)
        q = torch.randn(B, n_kept, T, dh, device=device, dtype=dtype)
        k, v = (torch.randn(B, KV, T, dh, device=device, dtype=dtype) for _ in range(2))
        q_all = torch.randn(B, H, T, dh, device=device, dtype=dtype)
        all_heads = torch.arange(H, device=device) // (H // KV)
        shape = f"B={B} T={T} dh={dh} {n_kept} of {H} heads, {KV} kv"
        yield _timed(
            "head_masked_attention", shape, dtype, device, 1,
            per_copy(head_masked_attention, q, k, v, kv_of_head, dh**-0.5, backend="triton"),
            per_copy(head_masked_attention, q, k, v, kv_of_head, dh**-0.5, backend="torch"),
            per_copy(head_masked_attention, q_all, k, v, all_heads, dh**-0.5, backend="torch"), H / n_kept,
        )  # fmt: skip
        if small or ARGS.no_sweep or T < 2048:
            continue
        timer = Timer(device)
        ref = triton_head_attention(q, k, v, kv_of_head, dh**-0.5).float()
        for cfg in (
            (64, 64, 4, None),
            (128, 64, 4, 3),
            (128, 64, 8, 3),
            (128, 32, 4, 3),
            (64, 64, 4, 3),
            (128, 128, 8, 2),
        ):
            blocks = AttentionBlocks(*cfg)
            row = {"kernel": "sweep_attention", "shape": shape, "blocks": str(blocks)}
            try:
                y = triton_head_attention(q, k, v, kv_of_head, dh**-0.5, blocks).float()
                row["rel_err"] = float((y - ref).abs().max() / ref.abs().max())
                row["triton_ms"] = timer.graph(
                    [partial(triton_head_attention, q, k, v, kv_of_head, dh**-0.5, blocks)]
                )
            except Exception as error:
                row["error"] = f"{type(error).__name__}: {error}"
            yield row


def _time_moe(device: str, small: bool):
    """MoE dispatch against the torch loop over experts; one expert dropped from the routing. Both paths
    sync on the host (route sizes), so both are timed eagerly."""
    torch = _torch()
    from workbench.kernels._triton_moe import MoeBlocks, triton_moe
    from workbench.kernels.moe_dispatch import moe_dispatch

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    cases = [(40, 32, 48, 4, 2)] if small else [
        (16, 2048, 1408, 60, 4), (512, 2048, 1408, 60, 4), (16, 4096, 14336, 8, 2), (512, 4096, 14336, 8, 2),
        (4096, 4096, 14336, 8, 2),
    ]  # fmt: skip
    timer = Timer(device)
    for T, d, dm, E, k in cases:
        x = torch.randn(T, d, device=device, dtype=dtype)
        gate_up = (torch.randn(E, 2 * dm, d, device=device) / d**0.5).to(dtype)
        down = (torch.randn(E, d, dm, device=device) / dm**0.5).to(dtype)
        top_w, top_idx = torch.softmax(torch.randn(T, E, device=device), -1).topk(k, -1)
        top_w = torch.where(top_idx == 1, 0.0, top_w).to(dtype)  # expert 1 dropped
        args = (x, top_idx, top_w, gate_up, down, "silu")
        shape = f"T={T} d={d} dm={dm} E={E} top-{k}, expert 1 dropped"
        row = {
            "kernel": "moe_dispatch",
            "shape": shape,
            "dtype": str(dtype).removeprefix("torch."),
            "timing": "eager",
        }
        try:
            y, ref = (
                moe_dispatch(*args, backend="triton").float(),
                moe_dispatch(*args, backend="torch").float(),
            )
            row["rel_err"] = float((y - ref).abs().max() / ref.abs().max())
            row["triton_eager_ms"] = timer.eager(partial(moe_dispatch, *args, backend="triton"))
            row["torch_eager_ms"] = timer.eager(partial(moe_dispatch, *args, backend="torch"))
            row["speedup_vs_torch_path"] = row["torch_eager_ms"] / row["triton_eager_ms"]
        except Exception:
            row["error"] = traceback.format_exc()
        yield row
        if not small and not ARGS.no_sweep and T == 512:
            for cfg in (
                (64, 32, 32, 4),
                (64, 64, 64, 4),
                (64, 128, 64, 8),
                (64, 64, 32, 4),
                (128, 128, 64, 8),
            ):
                blocks = MoeBlocks(*cfg)
                row = {"kernel": "sweep_moe", "shape": shape, "blocks": str(blocks), "timing": "eager"}
                try:
                    yb = triton_moe(*args, config=blocks).float()
                    row["rel_err"] = float((yb - ref).abs().max() / ref.abs().max())
                    row["triton_eager_ms"] = timer.eager(partial(triton_moe, *args, config=blocks))
                except Exception as error:
                    row["error"] = f"{type(error).__name__}: {error}"
                yield row
        del gate_up, down, args


# ---- (3) replay ----


class MiniHandle:
    """What replay reads of a ModelHandle, for a plain Hugging Face model (no transformer-lens here)."""

    def __init__(self, hf, name: str) -> None:
        cfg = hf.config
        self.model = types.SimpleNamespace(blocks=hf.model.layers)
        self.name = name
        self.hf = hf
        self.facts = types.SimpleNamespace(
            n_layers=cfg.num_hidden_layers,
            n_heads=cfg.num_attention_heads,
            d_model=cfg.hidden_size,
            n_experts=getattr(cfg, "num_local_experts", None),
            experts_per_token=getattr(cfg, "num_experts_per_tok", None),
        )

    @property
    def device(self):
        return next(self.hf.parameters()).device

    def logits(self, tokens):
        return self.hf(tokens.to(self.device)).logits

    @property
    def hf_model(self):
        return self.hf

    def hf_parameters(self):
        from workbench.models.bridge import hf_parameters

        return hf_parameters(self.hf)


def replay_section(device: str, small: bool) -> dict:
    torch = _torch()
    out = {}
    dtypes = [torch.float32] if small else [torch.float32, torch.bfloat16]
    for kind, dtype in [("llama", d) for d in dtypes] + [("mixtral", d) for d in dtypes]:
        name = f"{kind} {str(dtype).removeprefix('torch.')}"
        try:
            out[name] = _replay_model(device, small, dtype, kind)
        except Exception:  # one model's failure leaves the others to run
            out[name] = {"error": traceback.format_exc()}
            log(f"!! replay {name}:\n{out[name]['error']}")
    return out


def _replay_model(device: str, small: bool, dtype, kind: str) -> dict:
    torch = _torch()
    from transformers import LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM

    from workbench.replay.edits import ExpertMask, HeadMask, NeuronMask, TopK, WeightPrune
    from workbench.replay.effects import effects
    from workbench.replay.engine import ReplayEngine
    from workbench.replay.stack import Stack

    torch.manual_seed(0)
    if kind == "llama":
        d, dm, layers, heads, kv = (64, 96, 2, 4, 2) if small else (576, 1536, 4, 9, 3)
        cfg = LlamaConfig(
            hidden_size=d, intermediate_size=dm, num_hidden_layers=layers, num_attention_heads=heads,
            num_key_value_heads=kv, vocab_size=256 if small else 4096, max_position_embeddings=512,
        )  # fmt: skip
        hf = LlamaForCausalLM(cfg)
        k = max(1, dm // 10)
        last = layers - 1
        edits = {
            "head_mask": [HeadMask(layer=1, heads=(0, 2, 3))],
            "topk_10pct": [TopK(layer=last, k=k)],
            "neuron_mask": [NeuronMask(layer=0, neurons=tuple(range(0, dm, 3)))],
            "prune_2:4": [WeightPrune(sparsity=0.5, pattern="2:4", layer_list=(last,))],
            "prune_unstructured_70": [WeightPrune(sparsity=0.7, pattern="layerwise", layer_list=(0,))],
        }
        edits["all"] = [e for v in edits.values() for e in v]
    else:
        d, dm, layers = (64, 48, 2) if small else (256, 512, 2)
        cfg = MixtralConfig(
            hidden_size=d, intermediate_size=dm, num_hidden_layers=layers, num_attention_heads=8,
            num_key_value_heads=4, num_local_experts=8, num_experts_per_tok=2,
            vocab_size=256 if small else 4096, max_position_embeddings=512,
        )  # fmt: skip
        hf = MixtralForCausalLM(cfg)
        edits = {
            "expert_drop": [ExpertMask(layer=1, experts=(2, 5), mode="drop")],
            "expert_reroute": [ExpertMask(layer=0, experts=(1,), mode="reroute")],
            "head_mask": [HeadMask(layer=1, heads=(0, 5))],
        }
    hf = hf.to(device=device, dtype=dtype).eval()
    handle = MiniHandle(hf, f"random {kind} d={d}")
    B, T = (2, 16) if small else (4, 128)
    tokens = torch.randint(0, cfg.vocab_size, (B, T), device=device)
    engines = {}
    build = {}
    # A random router's near-ties flip top-k choices under bfloat16 rounding, so the stack's check against
    # the Hugging Face forward (which replay runs once per stack) cannot pass for a random MoE in bfloat16;
    # there it is skipped, and the disagreement is recorded below instead.
    skip_check = kind == "mixtral" and dtype != torch.float32
    for backend in ("torch", "triton"):
        t0 = time.perf_counter()
        stack = Stack.of(handle, backend=backend)
        stack.verified = skip_check
        engines[backend] = ReplayEngine(handle, tokens, stack)
        build[backend] = time.perf_counter() - t0
    base_diff = _max_rel(engines["triton"].base.logits, engines["torch"].base.logits)
    with torch.inference_mode():
        hf_diff = _max_rel(engines["torch"].base.logits[:1], handle.logits(tokens[:1]))
    result = {
        "model": handle.name,
        "dtype": str(dtype),
        "batch": [B, T],
        "unedited_logits_rel_diff": base_diff,
        "stack_vs_hf_rel_diff": hf_diff,
        "stack_check_skipped": skip_check,
    }
    result["engine_build_s"] = build
    rows = {}
    for name, edit_list in edits.items():
        row = {}
        replayed = {b: engines[b].replay(edit_list) for b in engines}
        row["logits_max_abs_diff"] = float(
            (replayed["triton"].trace.logits.float() - replayed["torch"].trace.logits.float()).abs().max()
        )
        row["logits_rel_diff"] = _max_rel(replayed["triton"].trace.logits, replayed["torch"].trace.logits)
        fx = {b: effects(engines[b], replayed[b]).summary() for b in engines}
        row["kl_torch"], row["kl_triton"] = fx["torch"]["kl"], fx["triton"]["kl"]
        row["ce_delta_torch"], row["ce_delta_triton"] = fx["torch"]["ce_delta"], fx["triton"]["ce_delta"]
        plans = {b: engines[b].compile(edit_list) for b in engines}
        row["replay_ms"] = {b: _wall_ms(device, partial(engines[b].replay, plans[b])) for b in engines}
        row["time_ratio_triton_over_torch"] = row["replay_ms"]["triton"] / row["replay_ms"]["torch"]
        rows[name] = row
        ratio = row["time_ratio_triton_over_torch"]
        log(f"  {kind} {dtype}: {name:22} rel diff {row['logits_rel_diff']:.2e} time ratio {ratio:.2f}")
    result["edits"] = rows
    result["full_forward_ms"] = {b: _wall_ms(device, lambda b=b: engines[b].forward()) for b in engines}
    return result


def _max_rel(a, b) -> float:
    a, b = a.float(), b.float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _wall_ms(device: str, fn: Callable[[], object], repeats: int = 7) -> float:
    """Median wall time of fn() with the device synchronised (what a user waits for)."""
    torch = _torch()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(repeats if not ARGS.small else 1):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


# ---- (4) capture ----


def capture_section(device: str, small: bool) -> dict:
    """A SmolLM2-shaped random Llama (30 layers, d 576, d_mlp 1536): a plain forward against forwards
    whose hooks capture every layer's MLP activations (the input of down_proj) to GPU memory, to pinned
    host memory, to pageable host memory, and to disk through the workbench's StoreWriter.

    Plain forward hooks on the Hugging Face modules: the probes (workbench.probes) need transformer-lens's
    hook points, which the GPU machine does not have."""
    torch = _torch()
    from transformers import LlamaConfig, LlamaForCausalLM

    from workbench.store import FieldSpec, StoreWriter

    torch.manual_seed(0)
    d, dm, layers, vocab = (64, 96, 2, 256) if small else (576, 1536, 30, 49152)
    B, T, batches = (2, 16, 2) if small else (8, 512, 4)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    cfg = LlamaConfig(
        hidden_size=d, intermediate_size=dm, num_hidden_layers=layers, num_attention_heads=4 if small else 9,
        num_key_value_heads=2 if small else 3, vocab_size=vocab, max_position_embeddings=2048,
    )  # fmt: skip
    hf = LlamaForCausalLM(cfg).to(device=device, dtype=dtype).eval()
    tokens = [torch.randint(0, vocab, (B, T), device=device) for _ in range(batches)]
    n_tok = B * T
    names = [f"blocks.{i}.mlp.hook_post" for i in range(layers)]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    pinned = [torch.empty(n_tok, dm, dtype=dtype, pin_memory=device == "cuda") for _ in range(layers)]
    state: dict = {}

    def run(mode: str) -> float:
        handles = []
        store_dir = Path(tempfile.mkdtemp(prefix="gpu_check_store_"))
        writer = None
        if mode == "disk":
            fields = [FieldSpec(n, (dm,), str(dtype).removeprefix("torch.")) for n in names]
            writer = StoreWriter.open(store_dir / "store", fields, n_tok * batches, {"check": "gpu"})
        kept: list = []

        def hook_for(i: int):
            def hook(module, args):
                a = args[0].reshape(-1, dm)
                if mode == "gpu":
                    kept.append(a.clone())
                elif mode in ("pinned", "disk"):
                    pinned[i].copy_(a, non_blocking=True)
                else:
                    kept.append(a.to("cpu"))

            return hook

        if mode != "plain":
            handles = [
                hf.model.layers[i].mlp.down_proj.register_forward_pre_hook(hook_for(i)) for i in range(layers)
            ]
        try:
            with torch.inference_mode():
                hf(tokens[0])  # warm-up
                sync()
                kept.clear()
                t0 = time.perf_counter()
                for batch in tokens:
                    hf(batch)
                    if mode in ("pinned", "disk"):
                        sync()
                    if writer is not None:
                        meta = {k: torch.zeros(n_tok, dtype=torch.int64) for k in ("doc", "domain", "window")}
                        meta |= {"token": batch.flatten().cpu(), "position": torch.arange(T).repeat(B)}
                        writer.append({n: pinned[i] for i, n in enumerate(names)}, meta)
                if writer is not None:
                    writer.close()
                sync()
                seconds = time.perf_counter() - t0
        finally:
            for h in handles:
                h.remove()
            if writer is not None and mode == "disk":
                state["disk_bytes"] = sum(f.stat().st_size for f in (store_dir / "store").iterdir())
            shutil.rmtree(store_dir, ignore_errors=True)
            kept.clear()
        return seconds

    out = {
        "model": f"random llama d={d} d_mlp={dm} layers={layers} vocab={vocab}",
        "batch": [B, T],
        "batches": batches,
    }
    out["captured_bytes_per_token"] = layers * dm * torch.empty(0, dtype=dtype).element_size()
    for mode in ("plain", "gpu", "pinned", "pageable", "disk"):
        seconds = run(mode)
        out[mode] = {"tokens_per_s": n_tok * batches / seconds, "seconds": seconds}
        if mode != "plain":
            out[mode]["relative_to_plain"] = out[mode]["tokens_per_s"] / out["plain"]["tokens_per_s"]
            out[mode]["captured_GBps"] = out[mode]["tokens_per_s"] * out["captured_bytes_per_token"] / 1e9
        log(f"  capture {mode:9} {out[mode]['tokens_per_s']:12,.0f} tok/s")
    out["disk_bytes"] = state.get("disk_bytes")
    return out


# ---- (5) the repository's parity tests, compiled ----


def pytest_section(device: str, small: bool) -> dict:
    if small or device != "cuda":
        return {"skipped": "the CPU suite runs these under the interpreter"}
    remaining = ARGS.budget_s + 40 - elapsed()
    if remaining < 30:
        return {"skipped": f"only {remaining:.0f} s of the budget left"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--pytest-only"]
    env = dict(os.environ, TRITON_INTERPRET="0", PYTHONUNBUFFERED="1")
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=remaining, env=env, cwd=REPO)
    except subprocess.TimeoutExpired as e:
        return {"timed_out_after_s": remaining, "tail": (e.stdout or b"")[-3000:]}
    tail = (done.stdout + done.stderr)[-6000:]
    log(tail[-1500:])
    return {"returncode": done.returncode, "tail": tail}


def run_pytest() -> int:
    """tests/unit/test_kernels.py with the kernels compiled (the subprocess of pytest_section)."""
    import pytest

    # test_kernels_import_without_triton starts a bare interpreter that needs the package installed
    args = [
        str(REPO / "tests" / "unit" / "test_kernels.py"), "-q", "-p", "no:cacheprovider", "-o", "addopts=",
        "--rootdir", str(REPO), "-k", "not import_without_triton",
    ]  # fmt: skip
    return pytest.main(args)


# ---- main ----


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="the JSON report")
    parser.add_argument("--small", action="store_true", help="tiny shapes on the CPU under the interpreter")
    parser.add_argument("--budget-s", type=float, default=270.0, help="sections starting later are skipped")
    parser.add_argument("--warmup-ms", type=float, default=10.0)
    parser.add_argument("--rep-ms", type=float, default=40.0)
    parser.add_argument("--no-sweep", action="store_true", help="skip the launch-shape sweeps")
    parser.add_argument("--no-graphs", action="store_true", help="eager timings only (no CUDA graphs)")
    parser.add_argument("--only", default="", help="comma-separated sections to run (default: all)")
    parser.add_argument("--pytest-only", action="store_true", help=argparse.SUPPRESS)
    global ARGS
    ARGS = parser.parse_args(argv)
    if ARGS.pytest_only:
        bootstrap()
        return run_pytest()
    os.environ["TRITON_INTERPRET"] = "1" if ARGS.small else "0"  # before triton is first imported
    bootstrap()
    torch = _torch()
    import triton

    device = "cpu" if ARGS.small else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --small for the CPU dry run", file=sys.stderr)
        return 2
    REPORT["env"] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (TRITON_INTERPRET=1)",
        "TRITON_INTERPRET": os.environ["TRITON_INTERPRET"],
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if device == "cuda":
        REPORT["env"]["capability"] = list(torch.cuda.get_device_capability())
    log(REPORT["env"])
    only = {s for s in ARGS.only.split(",") if s}
    plan = [
        ("ceilings", lambda: ceilings(device)),
        ("parity", lambda: parity_rows(device, ARGS.small)),
        ("timings", lambda: timing_rows(device, ARGS.small)),
        ("sparse_mlp", lambda: sparse_mlp_section(device, ARGS.small)),
        ("replay", lambda: replay_section(device, ARGS.small)),
        ("capture", lambda: capture_section(device, ARGS.small)),
        ("pytest", lambda: pytest_section(device, ARGS.small)),
    ]
    for name, fn in plan:
        if not only or name in only:
            section(name, fn)
    REPORT["total_s"] = round(elapsed(), 1)
    save()
    mlp = REPORT["sections"].get("sparse_mlp") or {}
    rows = (REPORT["sections"].get("parity") or []) + (mlp.get("parity", []) if isinstance(mlp, dict) else [])
    bad = [r for r in rows if not r.get("ok") and "skipped" not in r]
    log(f"done in {elapsed():.0f} s; parity failures: {len(bad)}; section errors: {sorted(REPORT['errors'])}")
    return 1 if bad or REPORT["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
