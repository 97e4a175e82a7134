"""The MLP's input and output of one layer, read from the Hugging Face modules directly (no bridge hooks).

Training needs only (x, y) at one layer, for many tokens: the TransformerBridge's forward (its hook
points and wrappers on every module) costs about a quarter more than the plain Hugging Face modules.
`DirectPairs` builds the base model truncated after layer L (layers 0..L only), sharing the bridge's
weight tensors (nothing is copied), and reads the MLP module's input and output with one forward hook
that then stops the pass. The result equals the bridge's `blocks.L.mlp.hook_in` / `hook_out`
(tests/unit/test_transcoder_data_direct.py).

With `dtype=torch.bfloat16` the pass runs under autocast: the matmuls take bfloat16 inputs, while the
residual stream, norms and the pairs handed out stay float32. On a CPU with native bfloat16 dot products
(AVX-512 BF16, AMX) this halves the forward's time; the pairs then differ from float32 ones by about
1 % (relative), which `pairs_dtype("auto")` accepts for training data only where it buys that speed.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from workbench.errors import WorkbenchError
from workbench.models import ModelHandle
from workbench.models.hooks import hooks_attached
from workbench.transcoders.defaults import PAIRS_DTYPES


class _Stop(Exception):
    """Raised by the MLP hook: nothing after the layer's MLP is needed."""


def _layers(base: nn.Module) -> nn.ModuleList:
    for name in ("h", "layers"):
        layers = getattr(base, name, None)
        if isinstance(layers, nn.ModuleList):
            return layers
    raise WorkbenchError(f"No list of layers (h or layers) in {type(base).__name__}.")


def _layer_count_key(config) -> str:
    for key in ("num_hidden_layers", "n_layer"):
        if hasattr(config, key):
            return key
    raise WorkbenchError(f"Cannot tell the number of layers of {type(config).__name__}.")


def cpu_has_native_bfloat16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bfloat16 dot products in hardware (x86 AVX-512 BF16 or AMX), read
    from /proc/cpuinfo's flags (Linux); anything else counts as no, where bfloat16 would be emulated."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return False
    flags = next(
        (line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), []
    )
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pairs_dtype(requested: str, device: torch.device | str) -> torch.dtype:
    """The precision of the forward that makes training pairs: float32, bfloat16, or auto (bfloat16 on a
    GPU or CPU that computes it natively, where it is about twice as fast; float32 elsewhere)."""
    if requested not in PAIRS_DTYPES:
        raise WorkbenchError(f"--pairs-dtype must be one of {', '.join(PAIRS_DTYPES)}, got {requested!r}.")
    if requested != "auto":
        return getattr(torch, requested)
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bfloat16() else torch.float32


class DirectPairs:
    """(x, y) of layer `layer`'s MLP for token ids, through a truncated plain Hugging Face base model."""

    def __init__(self, handle: ModelHandle, layer: int, dtype: torch.dtype = torch.float32) -> None:
        from transformers import AutoModel

        from workbench.models.bridge import hf_parameters

        original = handle.hf_model
        config = copy.deepcopy(original.config)
        setattr(config, _layer_count_key(config), layer + 1)
        prefix = original.base_model_prefix + "."
        # built with its own (random) weights, then every parameter is replaced by the bridge's tensor;
        # buffers (rotary frequencies, masks) are the ones Hugging Face computes from the config
        base = AutoModel.from_config(config, attn_implementation=original.config._attn_implementation)
        shared = {
            name.removeprefix(prefix): getattr(module, attr)
            for name, module, attr in hf_parameters(original)
            if name.startswith(prefix)
        }
        missing, _ = base.load_state_dict(shared, strict=False, assign=True)
        if missing:
            raise WorkbenchError(f"The plain model of {handle.name} lacks weights for {missing[:4]}.")
        self.device = torch.device(handle.device)
        self.dtype = dtype
        self.base = base.to(self.device).eval().requires_grad_(False)
        self.mlp = _layers(base)[layer].mlp

    @torch.inference_mode()
    def __call__(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y [b·pos, d_model] (float32) of token ids [b, pos]."""
        seen: dict[str, torch.Tensor] = {}

        def hook(module, args, output):
            seen["x"], seen["y"] = args[0], output
            raise _Stop

        autocast = torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)
        try:
            with hooks_attached([(self.mlp, hook)]), autocast:
                self.base(input_ids=tokens.to(self.device), use_cache=False)
        except _Stop:
            pass
        d = seen["x"].shape[-1]
        return seen["x"].reshape(-1, d).float(), seen["y"].reshape(-1, seen["y"].shape[-1]).float()
