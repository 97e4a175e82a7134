"""The model as plain tensors, for replay: embeddings, per-layer norms / attention / MLP or MoE, unembedding.

Built once from the Hugging Face parameters as released (the bridge's weights, read through its
wrappers), so replay runs without hook overhead and can start at any layer from a cached residual.
Every block is pre-norm: x += attn(ln1(x)); x += mlp(ln2(x)). Supported: GPT-2 and the Llama family
(Llama, Mistral, Qwen2, Mixtral, Qwen2-MoE). Weight-pruning edits rebuild layers from masked copies of
the same named parameters (`params` overrides).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from workbench.errors import WorkbenchError
from workbench.kernels.moe_dispatch import moe_dispatch
from workbench.kernels.sparse_mlp import MlpParams, mlp_dense
from workbench.models import ModelHandle
from workbench.models.bridge import unwrap

LLAMA_LIKE = ("llama", "mistral", "qwen2", "mixtral", "qwen2_moe")
SUPPORTED = ("gpt2", *LLAMA_LIKE)


@dataclass
class Norm:
    weight: torch.Tensor
    bias: torch.Tensor | None
    eps: float
    rms: bool

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.rms:
            return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotate(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotary position embedding of x [B, H, T, dh] with cos, sin [T, dh]."""
    cos, sin = rope
    return x * cos + _rotate_half(x) * sin


@dataclass
class Attention:
    """Causal self-attention in nn.Linear layout: w_q [H*dh, d], w_k / w_v [KV*dh, d], w_o [d, H*dh]."""

    w_q: torch.Tensor
    b_q: torch.Tensor | None
    w_k: torch.Tensor
    b_k: torch.Tensor | None
    w_v: torch.Tensor
    b_v: torch.Tensor | None
    w_o: torch.Tensor
    b_o: torch.Tensor | None
    n_heads: int
    n_kv: int
    d_head: int
    scale: float
    rotary: bool
    # Pruned projections by name (q, k, v, o) -> callable(x, bias), run through the masked-matmul kernels
    linears: dict[str, Callable] | None = None

    def linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        w, bias = getattr(self, f"w_{name}"), getattr(self, f"b_{name}")
        if self.linears is not None and name in self.linears:
            return self.linears[name](x, bias)
        return F.linear(x, w, bias)

    def project(self, x: torch.Tensor, rope) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [B, H, T, dh], k, v [B, KV, T, dh], rotated when the model uses rotary embeddings."""
        b, t, _ = x.shape

        def heads(name: str):
            return self.linear(name, x).view(b, t, -1, self.d_head).transpose(1, 2)

        q, k, v = heads("q"), heads("k"), heads("v")
        if self.rotary:
            q, k = rotate(q, rope), rotate(k, rope)
        return q, k, v

    def output(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, H, T, dh] -> [B, T, d] through w_o."""
        b, h, t, dh = z.shape
        return self.linear("o", z.transpose(1, 2).reshape(b, t, h * dh))

    def __call__(self, x: torch.Tensor, rope) -> torch.Tensor:
        q, k, v = self.project(x, rope)
        z = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=self.scale, enable_gqa=self.n_kv != self.n_heads
        )
        return self.output(z)


@dataclass
class Moe:
    """A routed MoE block (Mixtral / Qwen2-MoE): softmax router, top-k, experts in HF fused layout."""

    router: torch.Tensor  # [E, d]
    gate_up: torch.Tensor  # [E, 2*dm, d]
    down: torch.Tensor  # [E, d, dm]
    act: str
    k: int
    renormalise: bool
    shared: MlpParams | None = None  # Qwen2-MoE's shared expert
    shared_gate: torch.Tensor | None = None  # [1, d]
    backend: str | None = None  # kernel backend: None (automatic), "torch" or "triton"

    def route(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits [T, E], top-k weights [T, k], top-k experts [T, k]) by the router's own rule."""
        logits = F.linear(h, self.router)
        weights, experts = torch.topk(torch.softmax(logits.float(), dim=-1), self.k, dim=-1)
        if self.renormalise:
            weights = weights / weights.sum(-1, keepdim=True)
        return logits, weights.to(h.dtype), experts

    def experts(self, h: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """Routed experts plus the shared expert, for h [T, d]."""
        y = moe_dispatch(h, experts, weights, self.gate_up, self.down, self.act, backend=self.backend)
        if self.shared is not None:
            y = y + torch.sigmoid(F.linear(h, self.shared_gate)) * mlp_dense(h, self.shared)
        return y

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(-1, x.shape[-1])
        _, weights, experts = self.route(h)
        return self.experts(h, weights, experts).view_as(x)


@dataclass
class Layer:
    ln1: Norm
    attn: Attention
    ln2: Norm
    mlp: MlpParams | Moe


def run_mlp(mlp: MlpParams | Moe, h: torch.Tensor) -> torch.Tensor:
    """The unedited MLP sublayer on its normalised input h [B, T, d]."""
    if isinstance(mlp, Moe):
        return mlp(h)
    return mlp_dense(h.reshape(-1, h.shape[-1]), mlp).view_as(h)


@dataclass
class Stack:
    """The whole model as tensors. `layer_params(i, overrides)` rebuilds one layer (for weight edits)."""

    arch: str
    embed: torch.Tensor  # [V, d]
    pos: torch.Tensor | None  # [n_ctx, d] learned positions (GPT-2)
    layers: list[Layer]
    norm: Norm
    unembed: torch.Tensor  # [V, d]
    unembed_bias: torch.Tensor | None
    rope_fn: Callable[[int], tuple[torch.Tensor, torch.Tensor]] | None
    build_layer: Callable[[int, dict[str, torch.Tensor]], Layer]
    params: dict[str, torch.Tensor]  # HF name -> tensor (the weights as released, not copied)
    backend: str | None = None  # kernels: None picks Triton on CUDA, torch elsewhere; or force one
    window: int | None = None  # sliding-window attention span, if the model uses one
    verified: bool = False  # the unedited stack has been checked against the model once

    @classmethod
    def of(cls, handle: ModelHandle, backend: str | None = None) -> Stack:
        """The handle's model as tensors. `backend="triton"` forces the Triton kernels (tests run them on
        the CPU under TRITON_INTERPRET=1); `"torch"` keeps them off."""
        hf = handle.hf_model
        config = hf.config
        kind = config.model_type
        if kind not in SUPPORTED:
            raise WorkbenchError(
                f"Replay supports {', '.join(SUPPORTED)} models; {handle.name} is {kind!r}. Use the "
                "hook-based edits (workbench.replay.hooked.edits_applied) for other architectures."
            )
        params = {name: module._parameters[attr].detach() for name, module, attr in handle.hf_parameters()}
        n = config.num_hidden_layers
        if kind == "gpt2":
            build = _gpt2_layer(config)
            pos = params["transformer.wpe.weight"]
            embed, norm = params["transformer.wte.weight"], _layer_norm(params, "transformer.ln_f", config)
            rope_fn = None
        else:
            build = _llama_layer(config)
            pos, embed = None, params["model.embed_tokens.weight"]
            norm = Norm(params["model.norm.weight"], None, config.rms_norm_eps, True)
            rope_fn = _rope_fn(hf, embed.dtype)
        unembed = params.get("lm_head.weight", embed)
        stack = cls(
            kind, embed, pos, [], norm, unembed, params.get("lm_head.bias"), rope_fn, build, params, backend
        )
        stack.layers = [stack.layer_from(i, params) for i in range(n)]
        stack.window = _sliding_window(config)
        return stack

    def check_length(self, n_tokens: int) -> None:
        """Refuse sequences the stack would compute differently from the model."""
        if self.pos is not None and n_tokens > self.pos.shape[0]:
            raise WorkbenchError(
                f"{n_tokens} tokens exceed the model's {self.pos.shape[0]} positions; use shorter windows"
            )
        if self.window is not None and n_tokens > self.window:
            raise WorkbenchError(
                f"{n_tokens} tokens exceed the sliding attention window ({self.window}), which replay "
                "does not implement; use windows of at most that length"
            )

    def layer_from(self, i: int, params: dict[str, torch.Tensor]) -> Layer:
        """Layer i built from named parameters (the released ones, or masked copies for weight edits)."""
        layer = self.build_layer(i, params)
        if isinstance(layer.mlp, Moe):
            layer.mlp.backend = self.backend
        return layer

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def rope(self, n_tokens: int):
        return None if self.rope_fn is None else self.rope_fn(n_tokens)

    def embedding(self, tokens: torch.Tensor) -> torch.Tensor:
        """The residual stream entering layer 0, [B, T, d]."""
        x = F.embedding(tokens, self.embed)
        if self.pos is not None:
            x = x + self.pos[: tokens.shape[1]]
        return x

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.norm(x), self.unembed, self.unembed_bias)


def _sliding_window(config) -> int | None:
    window = getattr(config, "sliding_window", None)
    if window is None or getattr(config, "use_sliding_window", True) is False:
        return None
    return int(window)


def _layer_norm(params, prefix: str, config) -> Norm:
    return Norm(params[f"{prefix}.weight"], params.get(f"{prefix}.bias"), config.layer_norm_epsilon, False)


def _gpt2_layer(config):
    d, n_heads = config.n_embd, config.n_head
    d_head = d // n_heads
    if getattr(config, "reorder_and_upcast_attn", False):
        raise WorkbenchError("Replay does not implement GPT-2's reorder_and_upcast_attn; use hooked edits")

    def build(i: int, params: dict[str, torch.Tensor]) -> Layer:
        p = f"transformer.h.{i}."
        qkv, qkv_b = params[p + "attn.c_attn.weight"], params[p + "attn.c_attn.bias"]  # Conv1D [d, 3d]
        w_q, w_k, w_v = (qkv[:, j * d : (j + 1) * d].T.contiguous() for j in range(3))
        b_q, b_k, b_v = qkv_b.split(d)
        scale = d_head**-0.5 if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            scale /= i + 1
        attn = Attention(
            w_q, b_q, w_k, b_k, w_v, b_v,
            params[p + "attn.c_proj.weight"].T.contiguous(), params[p + "attn.c_proj.bias"],
            n_heads, n_heads, d_head, scale, rotary=False,
        )  # fmt: skip
        mlp = MlpParams(
            w_in=params[p + "mlp.c_fc.weight"].T.contiguous(),
            b_in=params[p + "mlp.c_fc.bias"],
            w_gate=None,
            w_out=params[p + "mlp.c_proj.weight"],
            b_out=params[p + "mlp.c_proj.bias"],
            act=config.activation_function,
        )
        ln1, ln2 = _layer_norm(params, p + "ln_1", config), _layer_norm(params, p + "ln_2", config)
        return Layer(ln1, attn, ln2, mlp)

    return build


def _llama_layer(config):
    n_heads, n_kv = config.num_attention_heads, config.num_key_value_heads
    d_head = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    act = config.hidden_act
    eps = config.rms_norm_eps

    def gated(params, p: str) -> MlpParams:
        gate_bias = params.get(p + "gate_proj.bias")
        if gate_bias is not None and bool(gate_bias.any()):
            raise WorkbenchError("Replay does not implement a bias on the gate projection; use hooked edits")
        return MlpParams(
            w_in=params[p + "up_proj.weight"],
            b_in=params.get(p + "up_proj.bias"),
            w_gate=params[p + "gate_proj.weight"],
            w_out=params[p + "down_proj.weight"].T.contiguous(),
            b_out=params.get(p + "down_proj.bias"),
            act=act,
        )

    def build(i: int, params: dict[str, torch.Tensor]) -> Layer:
        p = f"model.layers.{i}."
        a = p + "self_attn."
        attn = Attention(
            params[a + "q_proj.weight"], params.get(a + "q_proj.bias"),
            params[a + "k_proj.weight"], params.get(a + "k_proj.bias"),
            params[a + "v_proj.weight"], params.get(a + "v_proj.bias"),
            params[a + "o_proj.weight"], params.get(a + "o_proj.bias"),
            n_heads, n_kv, d_head, d_head**-0.5, rotary=True,
        )  # fmt: skip
        if p + "mlp.experts.gate_up_proj" in params:
            shared = p + "mlp.shared_expert."
            mlp: MlpParams | Moe = Moe(
                router=params[p + "mlp.gate.weight"],
                gate_up=params[p + "mlp.experts.gate_up_proj"],
                down=params[p + "mlp.experts.down_proj"],
                act=act,
                k=config.num_experts_per_tok,
                renormalise=bool(getattr(config, "norm_topk_prob", True)),
                shared=gated(params, shared) if shared + "up_proj.weight" in params else None,
                shared_gate=params.get(p + "mlp.shared_expert_gate.weight"),
            )
        elif p + "mlp.up_proj.weight" in params:
            mlp = gated(params, p + "mlp.")
        else:
            raise WorkbenchError(f"Replay does not recognise the MLP of layer {i} ({config.model_type})")
        ln1 = Norm(params[p + "input_layernorm.weight"], None, eps, True)
        ln2 = Norm(params[p + "post_attention_layernorm.weight"], None, eps, True)
        return Layer(ln1, attn, ln2, mlp)

    return build


def _rope_fn(hf, dtype: torch.dtype) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
    """cos, sin [T, dh] from the model's own rotary module (its scaling rules included), cached by T."""
    module = unwrap(hf.model.rotary_emb)
    cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def rope(n_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        if n_tokens not in cache:
            probe = torch.zeros(1, n_tokens, 1, dtype=dtype, device=hf.device)
            cos, sin = module(probe, torch.arange(n_tokens, device=hf.device)[None])
            cache.clear()  # one length at a time: generation grows T by one each step
            cache[n_tokens] = (cos[0], sin[0])
        return cache[n_tokens]

    return rope
