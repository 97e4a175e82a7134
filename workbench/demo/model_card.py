"""Measure the demo models and write their model cards (data/models/NAME/README.md and card.json).

Run `python -m workbench.demo.model_card` after training. Numbers on the full held-out split:
loss against an add-one-smoothed bigram (and unigram) model fitted on the train split; for tiny-relu
the exact-zero density of MLP activations, trained and at initialisation (same seed); for tiny-moe
the expert load balance.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import torch

from workbench.corpus import windows_for
from workbench.demo.train_tiny import build_model, load_tokenizer, token_stream
from workbench.evaluate import evaluate
from workbench.models import ModelHandle, load_model
from workbench.paths import demo_model_dir


def ngram_baselines(windows, vocab: int) -> dict[str, float]:
    """Held-out loss of add-one-smoothed unigram and bigram models fitted on the train split.

    Scored on exactly the predictions `evaluate` scores (token t+1 from token t inside each window).
    """
    train = token_stream("train", load_tokenizer())
    unigram = torch.bincount(train, minlength=vocab).double()
    bigram = torch.zeros(vocab * vocab, dtype=torch.float64)
    bigram.index_add_(0, train[:-1] * vocab + train[1:], torch.ones(len(train) - 1, dtype=torch.float64))
    bigram = bigram.view(vocab, vocab)
    prev, nxt = windows.tokens[:, :-1].flatten(), windows.tokens[:, 1:].flatten()
    p_bi = (bigram[prev, nxt] + 1) / (bigram.sum(1)[prev] + vocab)
    p_uni = (unigram[nxt] + 1) / (unigram.sum() + vocab)
    return {"bigram_add_one": -p_bi.log().mean().item(), "unigram_add_one": -p_uni.log().mean().item()}


@torch.inference_mode()
def mlp_exact_zero_density(handle: ModelHandle, windows, batch_size: int = 16) -> list[float]:
    """Per layer, the mean over tokens of the fraction of MLP neurons with activation exactly 0
    subtracted from 1 (i.e. the share of nonzero `blocks.{l}.mlp.hook_post` entries)."""
    layers = handle.facts.n_layers
    nonzero = torch.zeros(layers, dtype=torch.float64)
    count = 0
    names = {f"blocks.{layer}.mlp.hook_post" for layer in range(layers)}
    for batch in windows.batches(batch_size):
        _, cache = handle.model.run_with_cache(batch.tokens, names_filter=lambda n: n in names)
        for layer in range(layers):
            nonzero[layer] += (cache[f"blocks.{layer}.mlp.hook_post"] != 0).double().mean(-1).sum()
        count += batch.tokens.numel()
    return (nonzero / count).tolist()


@torch.inference_mode()
def expert_load(handle: ModelHandle, windows, batch_size: int = 16) -> list[list[float]]:
    """Per layer, f_e = share of tokens routed to expert e (top-k of the router logits)."""
    facts = handle.facts
    counts = torch.zeros(facts.n_layers, facts.n_experts, dtype=torch.float64)
    tokens = 0
    names = {f"blocks.{layer}.mlp.gate.hook_out" for layer in range(facts.n_layers)}
    for batch in windows.batches(batch_size):
        _, cache = handle.model.run_with_cache(batch.tokens, names_filter=lambda n: n in names)
        for layer in range(facts.n_layers):
            logits = cache[f"blocks.{layer}.mlp.gate.hook_out"].reshape(-1, facts.n_experts)
            top = logits.topk(facts.experts_per_token, dim=-1).indices.flatten()
            counts[layer] += torch.bincount(top, minlength=facts.n_experts).double()
        tokens += batch.tokens.numel()
    return (counts / tokens).tolist()


def init_handle(name: str, config: dict, folder: Path) -> ModelHandle:
    model = build_model(config["arch"], config["seed"]).eval()
    model.save_pretrained(folder)
    load_tokenizer().save_pretrained(folder)
    return load_model(str(folder), progress=False)


def measure(name: str) -> dict:
    folder = demo_model_dir(name)
    config = json.loads((folder / "train_config.json").read_text())
    handle = load_model(name)
    windows = windows_for(handle, context=128, n_tokens=None)  # the whole held-out split
    result = evaluate(handle, windows, batch_size=16)
    baselines = ngram_baselines(windows, handle.facts.d_vocab)
    card = {
        "model": name,
        "heldout_tokens": result.tokens,
        "heldout_loss": result.loss,
        "heldout_perplexity": result.perplexity,
        "heldout_accuracy": result.accuracy,
        "by_domain": {d: vars(s) for d, s in result.by_domain.items()},
        "baselines": baselines,
        "margin_below_bigram": baselines["bigram_add_one"] - result.loss,
        "train": {
            k: config[k]
            for k in (
                "seed",
                "steps",
                "batch_size",
                "context",
                "lr",
                "tokens_seen",
                "train_tokens",
                "seconds",
                "router_aux_loss_coef",
            )
            if k in config
        },
    }
    if not handle.facts.moe:
        trained = mlp_exact_zero_density(handle, windows)
        with tempfile.TemporaryDirectory() as tmp:
            initial = mlp_exact_zero_density(init_handle(name, config, Path(tmp)), windows)
        card["mlp_density"] = {
            "definition": "exact_zero: share of blocks.{l}.mlp.hook_post entries != 0, "
            "mean over held-out tokens",
            "per_layer": trained,
            "mean": sum(trained) / len(trained),
            "per_layer_at_init": initial,
            "mean_at_init": sum(initial) / len(initial),
        }
    else:
        load = expert_load(handle, windows)
        k, e = handle.facts.experts_per_token, handle.facts.n_experts
        balance = []
        for layer, f in enumerate(load):
            f_t = torch.tensor(f)
            p = f_t / f_t.sum()
            balance.append(
                {
                    "layer": layer,
                    "load": f,
                    "cv": (f_t.std(unbiased=False) / f_t.mean()).item(),
                    "max_over_mean": (f_t.max() / f_t.mean()).item(),
                    "normalised_entropy": (-(p * p.clamp_min(1e-12).log()).sum() / math.log(e)).item(),
                }
            )
        card["expert_load"] = {
            "definition": f"f_e = share of tokens with e in the top-{k} of the router logits "
            "(blocks.{l}.mlp.gate.hook_out); uniform = k/E",
            "uniform": k / e,
            "layers": balance,
        }
    return card


def write_card(card: dict, folder: Path) -> None:
    (folder / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    t = card["train"]
    lines = [
        f"# {card['model']}",
        "",
        f"Trained by this project: `python -m workbench.demo.train_tiny --model {card['model']}` "
        f"(seed {t['seed']}, {t['steps']} steps of {t['batch_size']}×{t['context']} tokens, "
        f"{t['tokens_seen']:,} tokens seen, {t['seconds']} s of wall time on a 2-core CPU). "
        "Config: `train_config.json`. Measured by `python -m workbench.demo.model_card`.",
        "",
        "**Data:** the `pydocs` corpus in `data/corpus/` (Python 3.11 documentation prose and "
        "standard-library "
        f"source, PSF licence), train split ({t['train_tokens']:,} tokens with the 4096-token byte-level BPE "
        "tokenizer in `data/corpus/tokenizer.json`).",
        "",
        f"## Held-out quality ({card['heldout_tokens']:,} predicted tokens, the whole held-out split)",
        "",
        "| | loss (nats/token) | perplexity | accuracy |",
        "|---|---|---|---|",
        f"| all | {card['heldout_loss']:.3f} | {card['heldout_perplexity']:.1f} "
        f"| {card['heldout_accuracy']:.3f} |",
    ]
    lines += [
        f"| {d} | {s['loss']:.3f} | {s['perplexity']:.1f} | {s['accuracy']:.3f} |"
        for d, s in card["by_domain"].items()
    ]
    b = card["baselines"]
    lines += [
        "",
        f"Baselines fitted on the train split, scored on the same predictions: add-one bigram "
        f"{b['bigram_add_one']:.3f}, add-one unigram {b['unigram_add_one']:.3f}. "
        f"The model is **{card['margin_below_bigram']:.3f} nats/token below the bigram**.",
    ]
    if "mlp_density" in card:
        d = card["mlp_density"]
        lines += [
            "",
            "## Lazy neurons (MLP activation density, `exact_zero`)",
            "",
            f"Mean over layers: **{d['mean']:.3f}** trained vs {d['mean_at_init']:.3f} at initialisation "
            f"(ratio {d['mean'] / d['mean_at_init']:.2f}).",
            "",
            "| layer | trained | at init |",
            "|---|---|---|",
        ]
        lines += [
            f"| {i} | {a:.3f} | {b0:.3f} |"
            for i, (a, b0) in enumerate(zip(d["per_layer"], d["per_layer_at_init"], strict=True))
        ]
    if "expert_load" in card:
        el = card["expert_load"]
        lines += [
            "",
            "## Expert load balance",
            "",
            el["definition"] + f" = {el['uniform']:.3f}.",
            "",
            "Trained with a Switch-style balance loss computed per layer (coefficient "
            f"{card['train'].get('router_aux_loss_coef', '?')}). Hugging Face's built-in Mixtral loss "
            "concatenates all layers' router logits, so it balances each expert index only summed over "
            "layers: an earlier run with it left expert 5 of layer 1 dead (f_e = 0.000) while expert 5 of "
            "layer 2 took 0.847.",
            "",
            "| layer | CV of f | max/mean | normalised entropy | f_e |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['layer']} | {r['cv']:.3f} | {r['max_over_mean']:.2f} | {r['normalised_entropy']:.3f} | "
            + " ".join(f"{x:.3f}" for x in r["load"])
            + " |"
            for r in el["layers"]
        ]
    lines += ["", "Licence of the weights: Apache-2.0, as the project.", ""]
    (folder / "README.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny-relu", "tiny-moe", "all"], default="all")
    args = parser.parse_args()
    for name in ["tiny-relu", "tiny-moe"] if args.model == "all" else [args.model]:
        card = measure(name)
        write_card(card, demo_model_dir(name))
        print(
            json.dumps(
                {
                    k: v
                    for k, v in card.items()
                    if k in ("model", "heldout_loss", "baselines", "margin_below_bigram")
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
