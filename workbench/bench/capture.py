"""`workbench bench capture`: on the same batches, (a) a plain forward of the Hugging Face model,
(b) TransformerLens `run_with_cache` keeping the same hooks in memory, (c) workbench capture
streaming them to an on-disk store. Hooks: every layer's MLP post-activation and full attention
patterns, float32.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from workbench.bench.timing import time_calls


def bench_capture(handle, windows, batch_size: int = 4, progress: bool = False, repeats: int = 2) -> dict:
    """Tokens/s and peak memory of plain forward, run_with_cache and streaming capture, plus the ratios.

    The three run interleaved `repeats` times; each keeps its fastest run and its largest peak (timings
    here are noisy).
    """
    from workbench.capturing import shard_tokens
    from workbench.probes.capture import ActivationProbe, AttentionProbe, StoreSink, capture

    hooks = [f"blocks.{layer}.mlp.hook_post" for layer in range(handle.facts.n_layers)]
    hooks += [f"blocks.{layer}.attn.hook_pattern" for layer in range(handle.facts.n_layers)]
    batches = [b.tokens for b in windows.batches(batch_size)]
    hf = handle.hf_model

    def plain():
        with torch.inference_mode():
            for tokens in batches:
                hf(tokens)

    def run_with_cache():
        caches = []
        with torch.inference_mode():
            for tokens in batches:
                caches.append(handle.model.run_with_cache(tokens, names_filter=lambda n: n in hooks)[1])
        return caches

    def streamed():
        with tempfile.TemporaryDirectory() as tmp:
            probes = [ActivationProbe(["blocks.*.mlp.hook_post"]), AttentionProbe()]
            per_shard = shard_tokens(probes, handle, windows.context, batch_size)
            sink = StoreSink(Path(tmp) / "store", {"bench": "capture"}, tokens_per_shard=per_shard)
            capture(handle, windows, probes, sink, batch_size=batch_size, progress=progress)

    with torch.inference_mode():
        hf(batches[0])  # warm-up
    tokens = windows.n_tokens
    modes = {"plain_forward": plain, "run_with_cache": run_with_cache, "workbench_capture": streamed}
    timings = time_calls(modes, repeats, warmup=0, memory=True)
    results = {
        name: {"seconds": t.best, "peak_rss_mb": max(t.peak_rss_mb), "tokens_per_s": tokens / t.best}
        for name, t in timings.items()
    }
    return {
        "model": handle.name,
        "tokens": tokens,
        "batch_size": batch_size,
        "hooks": "blocks.*.mlp.hook_post + blocks.*.attn.hook_pattern, float32",
        **results,
        "ratio_vs_run_with_cache": results["workbench_capture"]["tokens_per_s"]
        / results["run_with_cache"]["tokens_per_s"],
        "overhead_vs_forward": results["workbench_capture"]["seconds"] / results["plain_forward"]["seconds"],
        "threads": torch.get_num_threads(),
        "repeats": repeats,
    }
