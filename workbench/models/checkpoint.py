"""Checks a Hugging Face checkpoint folder before loading it, so that errors name the faulty file."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from workbench.errors import WorkbenchError

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def check_checkpoint(folder: Path) -> None:
    """Raise WorkbenchError if `folder` lacks config or weights, or a safetensors file is damaged."""
    config = folder / "config.json"
    if not config.is_file():
        raise WorkbenchError(f"{folder} is not a Hugging Face checkpoint: {config} is missing.")
    try:
        json.loads(config.read_text())
    except json.JSONDecodeError as err:
        raise WorkbenchError(f"Damaged checkpoint: {config} is not valid JSON ({err}).") from err
    weights = [p for pattern in WEIGHT_PATTERNS for p in sorted(folder.glob(pattern))]
    if not weights:
        raise WorkbenchError(
            f"Missing weights: no model.safetensors (or pytorch_model.bin) in {folder}. "
            "Copy the weight files next to config.json, or re-create the checkpoint."
        )
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise WorkbenchError(
            f"Missing tokenizer: none of {', '.join(TOKENIZER_FILES)} in {folder}. Save the tokenizer "
            "next to the weights (tokenizer.save_pretrained(folder))."
        )
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            if not (folder / shard).is_file():
                raise WorkbenchError(f"Missing weights: shard {folder / shard} named in {index} is absent.")
    for path in weights:
        if path.suffix == ".safetensors":
            check_safetensors(path)


def check_safetensors(path: Path) -> None:
    """Verify a safetensors file's header and that its length matches the tensors it declares."""
    size = path.stat().st_size
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise WorkbenchError(f"Damaged checkpoint: {path} is truncated ({size} bytes).")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > size - 8:
            raise WorkbenchError(f"Damaged checkpoint: {path} has a header longer than the file.")
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise WorkbenchError(f"Damaged checkpoint: {path} has an unreadable header ({err}).") from err
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if size != 8 + header_len + end:
        raise WorkbenchError(
            f"Damaged checkpoint: {path} holds {size} bytes but its header declares "
            f"{8 + header_len + end}; the file is truncated or corrupt. Re-download or re-create it."
        )


def tensor_sizes(folder: Path) -> dict[str, int]:
    """Element count of every tensor stored in the folder's safetensors files (tied weights stored once)."""
    from safetensors import safe_open

    sizes: dict[str, int] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                shape = f.get_slice(key).get_shape()
                sizes[key] = math.prod(shape)
    return sizes
