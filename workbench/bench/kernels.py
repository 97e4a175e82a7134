"""Speed of the kernels (`workbench.kernels`) against the dense computation they replace, in the same run.

`sparse_mlp_benchmark` times the CPU torch paths of the sparse MLP; `triton_benchmark` times the Triton
kernels against their torch CUDA paths on a GPU (`gpu_kernels`). Both are parts (b) and (c) of
`workbench bench replay`; `python -m workbench.bench.kernels` prints them alone.
"""

from __future__ import annotations

import itertools

import torch

from workbench.bench.timing import median_seconds, stopwatch
from workbench.kernels.dispatch import triton_importable
from workbench.kernels.sparse_mlp import MlpParams, gather_neurons, mlp_dense, sparse_mlp_per_token

SKIPPED = "no CUDA device: Triton kernels were checked for correctness under TRITON_INTERPRET=1 only"
MLP_SHAPES = {  # name: (d_model, d_mlp, gated, act)
    "smollm2": (576, 1536, True, "silu"),
    "relu-2048": (2048, 8192, False, "relu"),
}


def random_mlp(d_model: int, d_mlp: int, gated: bool, act: str, generator: torch.Generator) -> MlpParams:
    def w(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) / shape[-1] ** 0.5

    return MlpParams(
        w_in=w(d_mlp, d_model),
        b_in=None if gated else w(d_mlp),
        w_gate=w(d_mlp, d_model) if gated else None,
        w_out=w(d_mlp, d_model),
        b_out=None if gated else w(d_model),
        act=act,
    )


def _random_sets(tokens: int, d_mlp: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """[tokens, k] distinct random neurons per token."""
    return torch.rand(tokens, d_mlp, generator=generator).topk(k, dim=1).indices


def sparse_mlp_benchmark(repeats: int = 20) -> list[dict]:
    """Dense MLP vs the CPU sparse paths (float32), per shape, skip fraction, token count and set kind.

    Shared sets time `mlp_dense` on params gathered once (the gather is `apply_seconds`); per-token sets
    time `sparse_mlp_per_token` with a fresh random set each call, so no call finds the last call's rows in
    cache. The ideal speedup is `limit` = 1 / (1 - skip).
    """
    gen = torch.Generator().manual_seed(0)
    rows = []
    with torch.inference_mode():
        for shape, (d_model, d_mlp, gated, act) in MLP_SHAPES.items():
            p = random_mlp(d_model, d_mlp, gated, act, gen)
            for tokens in (1, 16, 256):
                x = torch.randn(tokens, d_model, generator=gen)
                dense_ms = median_seconds(lambda x=x, p=p: mlp_dense(x, p), repeats, warmup=3) * 1e3
                base = {"shape": shape, "d_model": d_model, "d_mlp": d_mlp, "gated": gated, "tokens": tokens}
                for skip in (0.9, 0.97):
                    k = round((1 - skip) * d_mlp)
                    for sets, sparse_ms, apply_seconds in _sparse_timings(x, p, k, repeats, gen):
                        speedup, limit = dense_ms / sparse_ms, 1 / (1 - skip)
                        rows.append(
                            base
                            | {"skip": skip, "sets": sets, "dense_ms": dense_ms, "sparse_ms": sparse_ms}
                            | {"speedup": speedup, "limit": limit, "fraction_of_limit": speedup / limit}
                            | {"apply_seconds": apply_seconds}
                        )
    return rows


def _sparse_timings(x: torch.Tensor, p: MlpParams, k: int, repeats: int, gen: torch.Generator):
    """(sets, sparse_ms, apply_seconds) for a shared set of k neurons and for per-token sets of k."""
    neurons = torch.randperm(p.d_mlp, generator=gen)[:k].sort().values
    apply_seconds = median_seconds(lambda: gather_neurons(p, neurons), 3, warmup=1)
    small = gather_neurons(p, neurons)
    yield "shared", median_seconds(lambda: mlp_dense(x, small), repeats, warmup=3) * 1e3, apply_seconds
    per_token = [_random_sets(x.shape[0], p.d_mlp, k, gen) for _ in range(repeats + 3)]  # none reused
    calls = itertools.count()  # warm-up calls included: each call takes the next set
    yield (
        "per_token",
        median_seconds(lambda: sparse_mlp_per_token(x, p, per_token[next(calls)]), repeats, warmup=3) * 1e3,
        None,
    )


def triton_benchmark() -> dict:
    """On a CUDA device: each Triton kernel against its torch CUDA path (and N:M against dense and 2:4)."""
    if not (torch.cuda.is_available() and triton_importable()):
        return {"skipped": SKIPPED}
    from workbench.bench.gpu_kernels import gpu_rows

    return {"device": torch.cuda.get_device_name(), "rows": gpu_rows()}


def print_table(rows: list[dict]) -> None:
    """The sparse MLP benchmark as a fixed-width table."""
    head = ("shape", "skip", "tok", "sets", "dense ms", "sparse ms", "speedup", "limit", "frac")
    print("{:10} {:>5} {:>4} {:9} {:>9} {:>9} {:>8} {:>6} {:>5}".format(*head))
    for r in rows:
        print(
            f"{r['shape']:10} {r['skip']:5.2f} {r['tokens']:4d} {r['sets']:9} {r['dense_ms']:9.3f} "
            f"{r['sparse_ms']:9.3f} {r['speedup']:8.2f} {r['limit']:6.1f} {r['fraction_of_limit']:5.2f}"
        )


if __name__ == "__main__":
    with stopwatch() as watch:
        print_table(sparse_mlp_benchmark())
    print(f"({watch.seconds:.1f} s)")
    print(triton_benchmark())
