"""Tiny random checkpoints the tests write themselves (GPT-2, Llama, Mixtral, Qwen2-MoE shapes), and the
corpus tokenizer they share. Imported by name (`from tiny_checkpoints import KINDS`): the tests folders
have no `__init__.py`, and a helper kept in a conftest would be shadowed by another folder's conftest."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
)

from workbench.demo.train_tiny import load_tokenizer


def corpus_tokenizer() -> PreTrainedTokenizerFast:
    return load_tokenizer()


def write_checkpoint(folder: Path, kind: str, seed: int = 0) -> Path:
    """A tiny random Hugging Face checkpoint of one of KINDS, with the corpus tokenizer."""
    torch.manual_seed(seed)
    common = dict(vocab_size=4096, bos_token_id=0, eos_token_id=0)
    if kind == "gpt2":
        model = GPT2LMHeadModel(
            GPT2Config(
                n_positions=64,
                n_embd=32,
                n_layer=2,
                n_head=4,
                n_inner=64,
                activation_function="relu",
                **common,
            )
        )
    elif kind == "llama":
        model = LlamaForCausalLM(
            LlamaConfig(
                hidden_size=32,
                intermediate_size=48,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=64,
                **common,
            )
        )
    elif kind == "qwen2moe":
        model = Qwen2MoeForCausalLM(
            Qwen2MoeConfig(
                hidden_size=32,
                intermediate_size=48,
                moe_intermediate_size=24,
                shared_expert_intermediate_size=40,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                num_experts=4,
                num_experts_per_tok=2,
                max_position_embeddings=64,
                decoder_sparse_step=1,
                mlp_only_layers=[],
                **common,
            )
        )
    elif kind == "mixtral":
        model = MixtralForCausalLM(
            MixtralConfig(
                hidden_size=32,
                intermediate_size=24,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=4,
                num_local_experts=4,
                num_experts_per_tok=2,
                max_position_embeddings=64,
                **common,
            )
        )
    else:
        raise ValueError(kind)
    model.eval().save_pretrained(folder)
    corpus_tokenizer().save_pretrained(folder)
    return folder


KINDS = ("gpt2", "llama", "mixtral", "qwen2moe")
