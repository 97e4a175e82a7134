"""`workbench bench transcoder`: the workbench's transcoder training against EleutherAI sparsify's.

Both train a TopK transcoder on the same model, layer, token windows (the train split, the same
windows in the same order), width, k, learning rate, warm-up and token budget; sparsify trains from
token ids through its own Hugging Face model, with Adam. That model is loaded as sparsify's command line
loads it for its FVU loss: the base model (`AutoModel`, no LM head) in the checkpoint's dtype on a CPU
(float32 for the workbench's checkpoints). `sparsify_dtype="bfloat16"` runs its whole training under
bfloat16 autocast instead (its model forward and its own coder), for a comparison at equal precision:
sparsify cannot train from a bfloat16 model on a CPU, as its float32 coder refuses bfloat16 inputs.

Both are timed end to end (model forwards included: sparsify's through its whole base model, ours
through the Hugging Face modules up to the layer, in the precision `pairs_dtype` resolves to) and both
results are evaluated by the same float32 evaluator on the same held-out tokens. The JSON reports
tokens/s, FVU, dead fraction and CE recovered of both, and the ratios speed_ratio_vs_sparsify (ours /
theirs, target ≥ 2), fvu_ratio_vs_sparsify and dead_ratio_vs_sparsify (target ≤ 1). sparsify's code
runs only here; nothing of it is ours.
"""

from __future__ import annotations

import os
import re
import tempfile

import torch

from workbench.bench.timing import stopwatch
from workbench.calibration import CalibrationSource, calibration_source, calibration_windows
from workbench.corpus import TokenWindows
from workbench.errors import WorkbenchError
from workbench.models import ModelHandle
from workbench.transcoders.data import model_pairs
from workbench.transcoders.defaults import default_layer
from workbench.transcoders.direct import pairs_dtype as direct_pairs_dtype
from workbench.transcoders.evaluate import evaluate_transcoder
from workbench.transcoders.model import Transcoder, TranscoderConfig
from workbench.transcoders.train import TrainConfig, Trainer

BATCH_TOKENS = 1024


def _sparsify():
    if not torch.cuda.is_available():
        os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")  # read when sparsify is first imported
    try:
        import sparsify
    except ImportError as err:
        raise WorkbenchError(
            "The transcoder benchmark needs EleutherAI sparsify: pip install -e '.[bench]' "
            "(eai-sparsify, a benchmark-only extra)."
        ) from err
    return sparsify


def _mlp_hookpoint(hf, layer: int) -> str:
    pattern = re.compile(rf"^(h|layers)\.{layer}\.mlp$")
    names = [n for n, _ in hf.base_model.named_modules() if pattern.match(n)]
    if not names:
        raise WorkbenchError(f"Cannot find layer {layer}'s MLP module in {type(hf).__name__} for sparsify.")
    return names[0]


def _from_sparsify(coder, cfg: TranscoderConfig) -> Transcoder:
    tc = Transcoder(cfg)
    with torch.no_grad():
        tc.W_enc.copy_(coder.encoder.weight.detach().float().T)
        tc.b_enc.copy_(coder.encoder.bias.detach().float())
        tc.W_dec.copy_(coder.W_dec.detach().float())
        tc.b_dec.copy_(coder.b_dec.detach().float())
    return tc


def train_with_sparsify(
    handle,
    windows: TokenWindows,
    cfg: TranscoderConfig,
    lr: float,
    warmup: int,
    seed: int,
    dtype: str = "auto",
):
    """sparsify's Trainer on the same windows; returns (transcoder in our layout, seconds, precision).

    dtype: auto (the checkpoint's, as sparsify's command line loads it), float32, or bfloat16 (float32
    weights, everything under bfloat16 autocast)."""
    sparsify = _sparsify()
    from datasets import Dataset
    from transformers import AutoModel

    checkpoint = str(handle.facts.checkpoint)
    hf = AutoModel.from_pretrained(checkpoint, dtype="auto" if dtype == "auto" else torch.float32).eval()
    device = next(hf.parameters()).device  # where from_pretrained put it (the CPU here)
    autocasts = dtype == "bfloat16"
    forward = str(hf.dtype).removeprefix("torch.") + (" weights, bfloat16 autocast" if autocasts else "")
    hookpoint = _mlp_hookpoint(hf, cfg.layer)
    data = Dataset.from_dict({"input_ids": windows.tokens.tolist()}).with_format("torch")
    precision = torch.get_float32_matmul_precision()
    with tempfile.TemporaryDirectory() as save_dir:
        train_cfg = sparsify.TrainConfig(
            sparsify.SparseCoderConfig(transcode=True, k=cfg.k, num_latents=cfg.width),
            batch_size=max(1, BATCH_TOKENS // windows.context),
            optimizer="adam",
            lr=lr,
            lr_warmup_steps=warmup,
            hookpoints=[hookpoint],
            init_seeds=[seed],
            save_dir=save_dir,
            save_every=10**9,
            log_to_wandb=False,
        )
        trainer = sparsify.Trainer(train_cfg, data, hf)
        with stopwatch() as watch, torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocasts):
            trainer.fit()
        coder = trainer.saes[hookpoint]
    torch.set_float32_matmul_precision(precision)  # sparsify sets "high" for the whole process
    return _from_sparsify(coder, cfg), watch.seconds, forward


def bench_transcoder(
    handle: ModelHandle,
    windows: TokenWindows,
    batch_size: int = 8,
    train_tokens: int = 409_600,
    width: int | None = None,
    k: int = 32,
    layer: int | None = None,
    seed: int = 0,
    progress: bool = False,
    calibration: CalibrationSource | None = None,
    pairs_dtype: str = "auto",
    sparsify_dtype: str = "auto",
) -> dict:
    """Train both on `train_tokens` of `calibration` (default: pydocs:train), evaluate both on `windows`.

    `pairs_dtype` is our training forward's precision (direct.pairs_dtype: auto is bfloat16 on a CPU
    with native bfloat16); `sparsify_dtype` its model's (auto: the checkpoint's, as its command line)."""
    layer = default_layer(handle.facts.n_layers) if layer is None else layer
    width = width or 16 * handle.facts.d_model
    source = calibration or calibration_source(purpose="bench transcoder's training")
    train_windows = calibration_windows(handle, source, windows.context, train_tokens, seed)
    tokens = train_windows.n_tokens
    cfg = TranscoderConfig(handle.facts.d_model, handle.facts.d_model, width, "topk", k=k, layer=layer)
    train = TrainConfig(tokens=tokens, batch_size=BATCH_TOKENS, seed=seed, pairs_dtype=pairs_dtype)
    lr = train.learning_rate(cfg)
    dtype = direct_pairs_dtype(pairs_dtype, handle.device)

    ours = Transcoder(cfg, seed=seed)
    trainer = Trainer(ours, train)
    with stopwatch() as watch:
        trainer.run(
            model_pairs(
                handle,
                train_windows,
                layer,
                BATCH_TOKENS,
                buffer_tokens=min(65536, tokens // 4),
                seed=seed,
                dtype=dtype,
            ),
            progress=progress,
        )
    our_seconds = watch.seconds
    theirs, their_seconds, their_dtype = train_with_sparsify(
        handle, train_windows, cfg, lr, train.warmup_steps, seed, sparsify_dtype
    )

    evaluated = {}
    for name, tc in (("workbench", ours), ("sparsify", theirs)):
        result = evaluate_transcoder(handle, tc, windows, batch_size=batch_size, progress=progress)
        evaluated[name] = {k: v for k, v in result.compact().items() if k != "tokens"}
    body = {
        "model": handle.name,
        "layer": layer,
        "width": width,
        "k": k,
        "train_tokens": tokens,
        "train_data": train_windows.slice_info,
        "eval_tokens": windows.n_tokens,
        "learning_rate": lr,
        "workbench": {
            "model_forward": f"base model truncated after layer {layer}, {str(dtype).removeprefix('torch.')}",
            "seconds": our_seconds,
            "tokens_per_second": tokens / our_seconds,
            **evaluated["workbench"],
        },
        "sparsify": {
            "model_forward": f"whole base model (AutoModel), {their_dtype}",
            "seconds": their_seconds,
            "tokens_per_second": tokens / their_seconds,
            **evaluated["sparsify"],
        },
    }
    ours_dead, their_dead = body["workbench"]["dead_fraction"], body["sparsify"]["dead_fraction"]
    body["speed_ratio_vs_sparsify"] = (
        body["workbench"]["tokens_per_second"] / body["sparsify"]["tokens_per_second"]
    )
    body["fvu_ratio_vs_sparsify"] = body["workbench"]["fvu"] / body["sparsify"]["fvu"]
    body["dead_ratio_vs_sparsify"] = dead_ratio(ours_dead, their_dead)
    body["dead_fraction"] = {"workbench": ours_dead, "sparsify": their_dead}
    body["ce_recovered"] = {n: body[n]["ce_recovered"] for n in ("workbench", "sparsify")}
    body["targets"] = {
        "speed_ratio_vs_sparsify >= 2.0": body["speed_ratio_vs_sparsify"] >= 2.0,
        "fvu_ratio_vs_sparsify <= 1.0": body["fvu_ratio_vs_sparsify"] <= 1.0,
        "dead_ratio_vs_sparsify <= 1.0": body["dead_ratio_vs_sparsify"] <= 1.0,
    }
    return body


def dead_ratio(ours: float, theirs: float) -> float:
    """Our dead fraction over sparsify's; 1.0 when both have none, and a large number (not infinity,
    which JSON cannot hold) when only sparsify has none."""
    if theirs > 0:
        return ours / theirs
    return 1.0 if ours == 0 else 1e9
