"""The `replay` command (registered in workbench.cli, imported when first run)."""

from __future__ import annotations

import argparse
import time

from workbench.cli import calibration_flag, load_inputs, optional_run, positive_int, record

REPLAY_TOKENS = 512  # a few windows: the cached run keeps log-probabilities [tokens, vocab]


def cmd_replay(args: argparse.Namespace) -> dict:
    import torch
    from tqdm import tqdm

    from workbench.kernels.dispatch import triton_disabled
    from workbench.replay.edits import load_edits
    from workbench.replay.session import ReplaySession, merged

    edits = load_edits(args.edit)
    backend = None if args.kernels == "auto" else args.kernels
    chosen = None
    with optional_run(args, "replay") as run:
        handle, windows = load_inputs(args)
        _check_kernels(handle, backend)
        if args.logit_tokens:
            chosen = [_token_id(handle, text) for text in args.logit_tokens]
        results, first = [], None  # one batch of windows at a time: memory does not grow with --tokens
        for batch in tqdm(windows.tokens.split(args.batch_size), desc="replay", disable=args.json):
            session = ReplaySession(handle, batch, windows.slice_info, engine_of=first, backend=backend)
            first = first or session
            results.append(session.apply(edits, chosen))
        result = merged(results)
        if args.generate:
            prompt = (
                torch.tensor([handle.tokenizer(args.prompt, add_special_tokens=False)["input_ids"]])
                if args.prompt
                else windows.tokens[:1, : args.prompt_tokens]
            )
            start = time.perf_counter()
            result.generation = ReplaySession(handle, prompt, engine_of=first).generate(edits, args.generate)
            result.generation["seconds"] = round(time.perf_counter() - start, 4)
        record(args, run, [result])
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

    from workbench.errors import WorkbenchError
    from workbench.kernels.dispatch import use_triton

    try:
        use_triton(torch.empty(0, device=handle.device), backend=backend)
    except RuntimeError as err:
        raise WorkbenchError(f"--kernels {backend}: {err}") from None


def _token_id(handle, text: str) -> int:
    from workbench.errors import WorkbenchError

    ids = handle.tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise WorkbenchError(f"--logit-tokens: {text!r} is {len(ids)} tokens ({ids}); give single tokens")
    return ids[0]


def replay_flags(parser: argparse.ArgumentParser) -> None:
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
        "--prompt-tokens", type=positive_int, default=32, help="with --generate and no --prompt: its length"
    )


def cmd_finercut(args: argparse.Namespace) -> dict:
    from workbench.calibration import calibration_source, calibration_windows
    from workbench.replay.finercut import greedy_removal

    source = calibration_source(args.corpus, args.text, args.calibration, "finercut's removal choices")
    with optional_run(args, "finercut") as run:
        handle, windows = load_inputs(args)
        calibration = calibration_windows(handle, source, args.context, args.calibration_tokens, args.seed)
        data = {"heldout": windows.slice_info, "calibration": calibration.slice_info}
        result = greedy_removal(
            handle,
            calibration.tokens,
            windows.tokens,
            args.max_share,
            progress=not args.json,
            batch_size=args.batch_size,
            data=data,
        )
        record(args, run, [result])
    if not args.json:
        print(result.table().round(4).to_string(index=False))
    return {
        "model": result.model,
        "base_loss": result.base_loss,
        "steps": result.steps,
        "seconds": round(result.seconds, 2),
    }


def finercut_flags(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(tokens=1024)
    parser.add_argument(
        "--max-share", type=float, default=0.5, help="stop when this share of the sublayers is removed"
    )
    parser.add_argument(
        "--calibration-tokens",
        type=positive_int,
        default=256,
        help="training-split tokens on which each candidate's KL is measured",
    )
    calibration_flag(parser, "the tokens on which each candidate's KL is measured")
