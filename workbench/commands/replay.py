"""`workbench replay`: apply edits and measure their effect, replaying from the first edited layer."""

from __future__ import annotations

import argparse

from workbench.commands.flags import WINDOWS, load_inputs, optional_run, positive_int, record
from workbench.errors import WorkbenchError
from workbench.replay.defaults import PROMPT_TOKENS

REPLAY_TOKENS = 512  # a few windows: the cached run keeps log-probabilities [tokens, vocab]

TOKENS = f"{WINDOWS}, replayed --batch-size windows at a time"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(tokens=REPLAY_TOKENS)
    parser.add_argument(
        "--edit",
        required=True,
        help="a JSON file of edits (one object, a list, or {'edits': [...]}), or the JSON itself",
    )
    parser.add_argument(
        "--logit-tokens",
        nargs="+",
        metavar="TOKEN",
        help="also report the mean logit change of these tokens (each must be one token, e.g. ' Paris')",
    )
    parser.add_argument(
        "--kernels",
        choices=["auto", "torch", "triton"],
        default="auto",
        help="auto: Triton on CUDA, torch elsewhere (WORKBENCH_DISABLE_TRITON=1 turns Triton off)",
    )
    parser.add_argument("--generate", type=positive_int, help="also continue a prompt greedily N tokens")
    parser.add_argument("--prompt", help="with --generate: the prompt (default: the first window's start)")
    parser.add_argument(
        "--prompt-tokens",
        type=positive_int,
        default=PROMPT_TOKENS,
        help="with --generate and no --prompt: its length",
    )


def run(args: argparse.Namespace) -> dict:
    from workbench.kernels.dispatch import triton_disabled
    from workbench.replay.batched import replay_in_batches
    from workbench.replay.edits import load_edits

    edits = load_edits(args.edit)
    backend = None if args.kernels == "auto" else args.kernels
    chosen = None
    with optional_run(args, "replay") as folder:
        handle, windows = load_inputs(args)
        _check_kernels(handle, backend)
        if args.logit_tokens:
            chosen = [_token_id(handle, text) for text in args.logit_tokens]
        result = replay_in_batches(
            handle,
            windows,
            edits,
            batch_size=args.batch_size,
            logit_tokens=chosen,
            backend=backend,
            generate=args.generate,
            prompt=args.prompt,
            prompt_tokens=args.prompt_tokens,
            progress=not args.json,
        )
        record(args, folder, [result])
    if not args.json:
        print(result.table().round(4).to_string(index=False))
        if result.generation:
            print(f"unedited: {result.generation['base']!r}\nedited:   {result.generation['edited']!r}")
    body = {
        "edit": result.edits,
        "first_layer": result.first_layer,
        "ce_delta": result.ce_delta,
        "kl": result.kl,
        "top1_agreement": result.top1_agreement,
        "seconds": result.seconds,
        "full_forward_seconds": result.full_forward_seconds,
        "apply_seconds": result.apply_seconds,
        "ce_base": result.ce_base,
        "ce_edited": result.ce_edited,
        "tokens": result.tokens,
        "model": result.model,
        "resid_deviation": result.resid_deviation,
        "kernels": "torch (WORKBENCH_DISABLE_TRITON=1)" if triton_disabled() else args.kernels,
    }
    if result.generation:
        body["generation"] = result.generation
    if chosen:
        body["logit_diff"] = dict(zip(args.logit_tokens, result.logit_diff, strict=True))
    return body


def _check_kernels(handle, backend: str | None) -> None:
    """Refuse up front, with what to do, a backend that cannot run here (e.g. Triton on a CPU)."""
    import torch

    from workbench.kernels.dispatch import use_triton

    try:
        use_triton(torch.empty(0, device=handle.device), backend=backend)
    except RuntimeError as err:
        raise WorkbenchError(f"--kernels {backend}: {err}") from None


def _token_id(handle, text: str) -> int:
    ids = handle.tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise WorkbenchError(f"--logit-tokens: {text!r} is {len(ids)} tokens ({ids}); give single tokens")
    return ids[0]
