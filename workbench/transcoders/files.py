"""A transcoder folder: config.json + weights.safetensors (SAE-Lens layout names), written and read back
with every key, type and shape checked before anything is allocated; and the safe loader for training
checkpoints (tensors, numbers and containers only).
"""

from __future__ import annotations

import json
import math
import pickle
from dataclasses import MISSING, fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from workbench.errors import WorkbenchError
from workbench.transcoders.model import Transcoder, TranscoderConfig


def save_transcoder(tc: Transcoder, folder: Path) -> None:
    """The workbench's own format: config.json + weights.safetensors (SAE-Lens layout names)."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in tc.state_dict().items()}
    save_file(tensors, folder / "weights.safetensors")
    (folder / "config.json").write_text(json.dumps(tc.cfg.to_dict(), indent=2))


def load_weights(folder: Path, cfg: TranscoderConfig | None = None) -> dict[str, torch.Tensor]:
    """The weights of a workbench transcoder folder; with `cfg`, their shapes are checked against it first."""
    if cfg is not None:
        check_weights(cfg, folder / "weights.safetensors", folder / "config.json")
    return load_file(folder / "weights.safetensors")


def load_transcoder(folder: str | Path) -> Transcoder:
    """A transcoder from its folder, its config and weight shapes checked before anything is allocated."""
    folder = Path(folder)
    cfg = read_config(folder / "config.json")
    weights = load_weights(folder, cfg)
    tc = Transcoder(cfg)
    tc.load_state_dict(weights)
    return tc


def read_config(path: Path) -> TranscoderConfig:
    """A workbench transcoder config.json: valid JSON, exactly the known keys, values of the right types."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WorkbenchError(
            f"Cannot read the transcoder config {path} ({err}); re-save the transcoder."
        ) from None
    return config_from_dict(data, path)


def config_from_dict(data: object, where: Path | str) -> TranscoderConfig:
    """TranscoderConfig(**data), refusing unknown, missing and mistyped keys with a message naming them."""
    known = {f.name: f for f in fields(TranscoderConfig)}
    if not isinstance(data, dict):
        raise WorkbenchError(f"{where} must hold a JSON object with the keys {sorted(known)}.")
    required = {n for n, f in known.items() if f.default is MISSING and f.default_factory is MISSING}
    unknown, missing = sorted(set(data) - set(known)), sorted(required - set(data))
    if unknown or missing:
        raise WorkbenchError(
            f"{where} is not a transcoder config this workbench reads: "
            + "; ".join(
                [f"unknown key(s) {unknown}"] * bool(unknown) + [f"missing key(s) {missing}"] * bool(missing)
            )
            + f". Its keys are {sorted(known)}; re-save the transcoder, or fix the file."
        )
    counts = {"d_in": 1, "d_out": 1, "width": 1, "layer": 0}
    for key, low in counts.items():
        value = data.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise WorkbenchError(f"{where}: {key} must be an integer >= {low}, got {value!r}.")
    k, l1 = data.get("k"), data.get("l1")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int)):
        raise WorkbenchError(f"{where}: k must be an integer or null, got {k!r}.")
    if l1 is not None and (isinstance(l1, bool) or not isinstance(l1, int | float) or not l1 >= 0):
        raise WorkbenchError(f"{where}: l1 must be a number >= 0 or null, got {l1!r}.")
    for key, kind in (("arch", str), ("model", str), ("hook_in", str), ("hook_out", str), ("skip", bool)):
        if key in data and not isinstance(data[key], kind):
            raise WorkbenchError(f"{where}: {key} must be a {kind.__name__}, got {data[key]!r}.")
    if not isinstance(data.get("extra", {}), dict):
        raise WorkbenchError(f"{where}: extra must be a JSON object, got {data['extra']!r}.")
    try:
        return TranscoderConfig(**data)
    except WorkbenchError as err:
        raise WorkbenchError(f"{where}: {err}") from None


def expected_shapes(cfg: TranscoderConfig) -> dict[str, tuple[int, ...]]:
    """The tensors a transcoder of `cfg` holds, SAE-Lens layout."""
    shapes = {
        "W_enc": (cfg.d_in, cfg.width),
        "b_enc": (cfg.width,),
        "W_dec": (cfg.width, cfg.d_out),
        "b_dec": (cfg.d_out,),
    }
    return shapes | ({"W_skip": (cfg.d_out, cfg.d_in)} if cfg.skip else {})


def check_weights(cfg: TranscoderConfig, weights: Path, config: Path) -> None:
    """Before anything is allocated: the weight file holds every tensor `cfg` needs, in its shape, and
    building the transcoder fits in memory (a config claiming 10^12 features is refused here)."""
    import psutil
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            stored = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as err:
        raise WorkbenchError(
            f"{weights} is not a readable safetensors file ({err}); re-save the transcoder."
        ) from None
    expected = expected_shapes(cfg)
    missing = [key for key in expected if key not in stored]
    wrong = [f"{k} is {list(stored[k])}, not {list(v)}" for k, v in expected.items() if stored.get(k, v) != v]
    if missing or wrong:
        problems = ([f"it lacks {', '.join(missing)}"] if missing else []) + wrong
        raise WorkbenchError(
            f"{config} does not match {weights}: {'; '.join(problems)} (d_in={cfg.d_in}, width={cfg.width}, "
            f"d_out={cfg.d_out}, skip={cfg.skip}). The config or the weights were edited or mixed up; "
            "re-save the transcoder."
        )
    needed = 2 * 4 * sum(math.prod(shape) for shape in expected.values())  # initial float32 + loaded copy
    available = psutil.virtual_memory().available
    if needed > available:
        raise WorkbenchError(
            f"Loading {weights} needs about {needed / 2**30:.1f} GiB of memory; {available / 2**30:.1f} GiB "
            "is free. Free memory or load it on a larger machine."
        )


def safe_torch_load(path: Path) -> dict:
    """torch.load with weights_only=True; a file it refuses is reported as unsafe, never loaded anyway."""
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [line.strip() for line in str(err).splitlines()]
        found = (line for line in lines if "nsupported" in line and "weights_only" not in line)
        # torch's reason, without its advice on how to allow the object anyway
        reason = next(found, "refused by the safe loader").removeprefix("WeightsUnpickler error: ")
        reason = reason.split(" Please ")[0].split(" was not an allowed global")[0].rstrip(".")
        raise WorkbenchError(
            f"{path} is not safe to load: torch's safe loader refused it ({reason}). It holds Python "
            "objects other than tensors, numbers and containers, whose unpickling could run arbitrary "
            "code, or it is damaged. The workbench writes no such file; do not resume from it: delete its "
            "folder and train again without --resume."
        ) from None
    except (RuntimeError, OSError, EOFError) as err:
        raise WorkbenchError(
            f"{path} is damaged ({err}); delete its folder and train again without --resume."
        ) from None
