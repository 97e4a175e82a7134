"""Train the demo models: `tiny-relu` (GPT-2 style, ReLU MLPs) and `tiny-moe` (Mixtral style, 8x top-2).

One command, fixed seed, CPU only:  python -m workbench.demo.train_tiny --model all
Each model is written to data/models/NAME/ as an ordinary Hugging Face checkpoint (safetensors),
with the corpus tokenizer and `train_config.json` beside it. A checkpoint of model and optimiser is
kept under NAME/.partial every few hundred steps, so `--resume` continues an interrupted run.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    MixtralConfig,
    MixtralForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from workbench.corpus import load_corpus
from workbench.demo.build_tokenizer import EOS
from workbench.models.checkpoint import write_checksums
from workbench.paths import corpus_dir, data_dir


@dataclass
class TrainConfig:
    name: str
    arch: dict
    seed: int = 0
    steps: int = 1200
    batch_size: int = 32
    context: int = 128
    lr: float = 2e-3
    warmup: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    router_aux_loss_coef: float = 0.0
    corpus: str = "data/corpus (train split)"
    extra: dict = field(default_factory=dict)


CONFIGS = {
    "tiny-relu": TrainConfig(
        name="tiny-relu",
        arch=dict(
            kind="gpt2",
            vocab_size=4096,
            n_positions=128,
            n_embd=256,
            n_layer=4,
            n_head=4,
            n_inner=1024,
            activation_function="relu",
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=0,
            eos_token_id=0,
        ),
    ),
    "tiny-moe": TrainConfig(
        name="tiny-moe",
        arch=dict(
            kind="mixtral",
            vocab_size=4096,
            hidden_size=160,
            intermediate_size=112,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=4,
            num_local_experts=8,
            num_experts_per_tok=2,
            max_position_embeddings=128,
            tie_word_embeddings=True,
            router_aux_loss_coef=0.0,  # HF's cross-layer loss is off: per_layer_balance_loss replaces it
            bos_token_id=0,
            eos_token_id=0,
        ),
        router_aux_loss_coef=0.02,
        steps=2000,
    ),
}


def build_model(arch: dict, seed: int) -> PreTrainedModel:
    """A freshly initialised model for `arch`; the same seed gives the same initial weights."""
    torch.manual_seed(seed)
    spec = {k: v for k, v in arch.items() if k != "kind"}
    if arch["kind"] == "gpt2":
        return GPT2LMHeadModel(GPT2Config(**spec))
    return MixtralForCausalLM(MixtralConfig(**spec))


def load_tokenizer() -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_file=str(corpus_dir() / "tokenizer.json"),
        bos_token=EOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=EOS,
    )


def token_stream(split: str, tokenizer: PreTrainedTokenizerFast) -> torch.Tensor:
    """All documents of a split, tokenized and joined with EOS, as one int64 tensor."""
    ids: list[int] = []
    for doc in load_corpus("pydocs", split):
        ids.extend(tokenizer.encode(doc.text))
        ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


def per_layer_balance_loss(router_logits: tuple[torch.Tensor, ...], k: int) -> torch.Tensor:
    """Switch-style balance loss E · Σ_e f_e · P_e, computed per layer and averaged over layers.

    Hugging Face's Mixtral loss concatenates all layers' router logits first, so it only balances each
    expert index summed over layers (an expert can die in one layer if its namesake is busy in another).
    """
    losses = []
    for logits in router_logits:  # [tokens, E] per layer
        n_experts = logits.shape[-1]
        probs = logits.float().softmax(-1)
        chosen = torch.zeros_like(probs).scatter_(-1, probs.topk(k, dim=-1).indices, 1.0)
        losses.append(n_experts * (chosen.mean(0) * probs.mean(0)).sum())
    return torch.stack(losses).mean()


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _save_partial(path: Path, model, optimizer, step: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_model(model, str(tmp / "model.safetensors"))  # handles tied embeddings
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "step.json").write_text(json.dumps({"step": step}))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def train(cfg: TrainConfig, out_dir: Path, resume: bool = False, threads: int = 1) -> None:
    torch.set_num_threads(threads)
    tokenizer = load_tokenizer()
    stream = token_stream("train", tokenizer)
    model = build_model(cfg.arch, cfg.seed).train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    partial = out_dir / ".partial"
    start = 0
    if resume and partial.exists():
        load_model(model, str(partial / "model.safetensors"))
        optimizer.load_state_dict(torch.load(partial / "optimizer.pt", weights_only=True))
        start = json.loads((partial / "step.json").read_text())["step"]
        print(f"resuming {cfg.name} at step {start}")
    sampler = torch.Generator().manual_seed(cfg.seed + 1)
    for _ in range(start):  # replay the sampler so a resumed run sees the same batches
        torch.randint(0, len(stream) - cfg.context - 1, (cfg.batch_size,), generator=sampler)
    t0 = time.time()
    for step in range(start, cfg.steps):
        starts = torch.randint(0, len(stream) - cfg.context - 1, (cfg.batch_size,), generator=sampler)
        batch = torch.stack([stream[s : s + cfg.context] for s in starts.tolist()])
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        moe = cfg.arch["kind"] == "mixtral"
        out = model(input_ids=batch, labels=batch, **({"output_router_logits": True} if moe else {}))
        loss = out.loss
        aux = per_layer_balance_loss(out.router_logits, cfg.arch["num_experts_per_tok"]) if moe else None
        if aux is not None:
            loss = loss + cfg.router_aux_loss_coef * aux
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 50 == 0 or step == cfg.steps - 1:
            aux_s = f" balance {aux.item():.3f}" if aux is not None else ""
            print(
                f"{cfg.name} step {step} loss {out.loss.item():.3f}{aux_s} {time.time() - t0:.0f}s",
                flush=True,
            )
        if (step + 1) % 250 == 0 and step + 1 < cfg.steps:
            _save_partial(partial, model, optimizer, step + 1)
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    record = asdict(cfg) | {
        "threads": threads,
        "tokens_seen": cfg.steps * cfg.batch_size * cfg.context,
        "train_tokens": len(stream),
        "seconds": round(time.time() - t0),
    }
    (out_dir / "train_config.json").write_text(json.dumps(record, indent=2) + "\n")
    write_checksums(out_dir)  # checksums.json: every load of the named model checks its files against it
    shutil.rmtree(partial, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=[*CONFIGS, "all"], default="all")
    parser.add_argument("--out", type=Path, default=data_dir() / "models")
    parser.add_argument("--steps", type=int, default=None, help="override the configured step count")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    names = list(CONFIGS) if args.model == "all" else [args.model]
    for name in names:
        cfg = CONFIGS[name]
        if args.steps:
            cfg.steps = args.steps
        train(cfg, args.out / name, resume=args.resume, threads=args.threads)


if __name__ == "__main__":
    main()
