"""SAE-Lens interoperability: save transcoders in its on-disk format, load the ones it saved.

SAE-Lens 6.x stores `cfg.json` + `sae_weights.safetensors` with W_enc [d_in, d_sae], b_enc, W_dec
[d_sae, d_out], b_dec and, for skip transcoders, W_skip [d_out, d_in]; the workbench uses the same
layout, so a save is a copy. ReLU transcoders become SAE-Lens's `transcoder` / `skip_transcoder`.
SAE-Lens has no TopK transcoder, so TopK ones are written in the same layout with architecture
`topk_transcoder` (`topk_skip_transcoder`) and `k` recorded; `register_topk_with_saelens()` teaches
SAE-Lens to load them too (a subclass of its Transcoder whose encoder keeps the k largest).
A `workbench.json` beside them keeps the full workbench config, so a reload loses nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from workbench.errors import WorkbenchError
from workbench.transcoders.files import check_weights, config_from_dict, read_config
from workbench.transcoders.model import Transcoder

WEIGHTS, CONFIG, OURS = "sae_weights.safetensors", "cfg.json", "workbench.json"
ARCHITECTURE = {
    ("relu", False): "transcoder",
    ("relu", True): "skip_transcoder",
    ("topk", False): "topk_transcoder",
    ("topk", True): "topk_skip_transcoder",
}


def save_saelens(tc: Transcoder, folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = tc.cfg
    body = {
        "architecture": ARCHITECTURE[(cfg.arch, cfg.skip)],
        "d_in": cfg.d_in,
        "d_sae": cfg.width,
        "d_out": cfg.d_out,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "model_name": cfg.model,
            "hook_name": cfg.hook_in,
            "hook_name_out": cfg.hook_out,
            "hook_layer": cfg.layer,
            "trained_by": "interp-workbench",
        },
    }
    if cfg.arch == "topk":
        body["k"] = cfg.k
    tensors = {k: v.detach().float().contiguous() for k, v in tc.state_dict().items()}
    save_file(tensors, folder / WEIGHTS)
    (folder / CONFIG).write_text(json.dumps(body, indent=2))
    (folder / OURS).write_text(json.dumps(cfg.to_dict(), indent=2))
    return folder


def load_saelens(folder: str | Path) -> Transcoder:
    """A transcoder from an SAE-Lens folder (saved by SAE-Lens or by `save_saelens`).

    The config is checked against the weight file's tensor shapes before anything is allocated.
    """
    folder = Path(folder)
    if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
        raise WorkbenchError(f"{folder} is not an SAE-Lens folder: it needs {CONFIG} and {WEIGHTS}.")
    try:
        body = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WorkbenchError(f"{folder / CONFIG} is not valid JSON ({err}).") from None
    if not isinstance(body, dict):
        raise WorkbenchError(f"{folder / CONFIG} must hold a JSON object (SAE-Lens's config).")
    arch = body.get("architecture", "standard")
    known = {v: k for k, v in ARCHITECTURE.items()}
    if arch not in known:
        raise WorkbenchError(
            f"{folder} holds an SAE-Lens {arch!r}; the workbench loads {', '.join(known)} (JumpReLU and "
            "plain SAEs are not transcoders it can run yet)."
        )
    if body.get("normalize_activations", "none") != "none":
        raise WorkbenchError(f"{folder} normalises its activations; only 'none' is supported.")
    kind, skip = known[arch]
    if (folder / OURS).is_file():
        cfg = read_config(folder / OURS)
        theirs = {"d_in": body.get("d_in"), "d_sae": body.get("d_sae"), "d_out": body.get("d_out", cfg.d_out)}
        ours = {"d_in": cfg.d_in, "d_sae": cfg.width, "d_out": cfg.d_out}
        if theirs != ours or (cfg.arch, cfg.skip) != (kind, skip):
            raise WorkbenchError(
                f"{folder / CONFIG} ({arch}, {theirs}) and {folder / OURS} ({cfg.arch}, skip={cfg.skip}, "
                f"{ours}) describe different transcoders; re-save the folder, or delete {OURS} to load "
                f"from {CONFIG} alone."
            )
    else:
        missing = [key for key in ("d_in", "d_sae") if key not in body]
        if missing:
            raise WorkbenchError(f"{folder / CONFIG} lacks {', '.join(missing)}; SAE-Lens writes both.")
        meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
        layer = meta.get("hook_layer") or 0
        cfg = config_from_dict(
            {
                "d_in": body["d_in"],
                "d_out": body.get("d_out", body["d_in"]),
                "width": body["d_sae"],
                "arch": kind,
                "k": body.get("k"),
                "skip": skip,
                "model": str(meta.get("model_name") or ""),
                "layer": int(layer) if isinstance(layer, str) and layer.isdigit() else layer,
                "hook_in": str(meta.get("hook_name") or ""),
                "hook_out": str(meta.get("hook_name_out") or ""),
            },
            folder / CONFIG,
        )
    check_weights(cfg, folder / WEIGHTS, folder / CONFIG)
    weights = load_file(folder / WEIGHTS)
    tc = Transcoder(cfg)
    tc.load_state_dict({k: v.float() for k, v in weights.items() if k in dict(tc.named_parameters())})
    return tc


def register_topk_with_saelens() -> None:
    """Make `sae_lens.SAE.load_from_disk` load TopK transcoders (idempotent)."""
    from sae_lens import SkipTranscoder
    from sae_lens import Transcoder as SaeLensTranscoder
    from sae_lens.registry import SAE_CLASS_REGISTRY, register_sae_class
    from sae_lens.saes.transcoder import SkipTranscoderConfig
    from sae_lens.saes.transcoder import TranscoderConfig as SaeLensTranscoderConfig

    if "topk_transcoder" in SAE_CLASS_REGISTRY:
        return

    def topk_encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.hook_sae_acts_pre(self.process_sae_in(x) @ self.W_enc + self.b_enc)
        values, indices = torch.relu(pre).topk(self.cfg.k, dim=-1)
        return self.hook_sae_acts_post(torch.zeros_like(pre).scatter_(-1, indices, values))

    def config_class(base, name: str):
        from dataclasses import dataclass

        cls = dataclass(type(f"TopK{base.__name__}", (base,), {"__annotations__": {"k": int}, "k": 32}))
        cls.architecture = classmethod(lambda c: name)
        cls.from_dict = classmethod(
            lambda c, d: c(**{k: v for k, v in d.items() if k in c.__dataclass_fields__ and k != "metadata"})
        )
        return cls

    for name, base_sae, base_cfg in (
        ("topk_transcoder", SaeLensTranscoder, SaeLensTranscoderConfig),
        ("topk_skip_transcoder", SkipTranscoder, SkipTranscoderConfig),
    ):
        cfg_cls = config_class(base_cfg, name)
        sae_cls = type(f"TopK{base_sae.__name__}", (base_sae,), {"encode": topk_encode})
        sae_cls.from_dict = classmethod(lambda c, d, cfg_cls=cfg_cls: c(cfg_cls.from_dict(d)))
        register_sae_class(name, sae_cls, cfg_cls)
