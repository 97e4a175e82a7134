"""Checks a Hugging Face checkpoint folder before loading it, so that errors name the faulty file.

Content checksums: `write_checksums` records the sha256 of the files that define a model (weights, config,
tokenizer) in `checksums.json` when a model is written or converted; `check_checkpoint` verifies every
recorded file whenever a folder that has one is loaded, so that changed bytes never load silently.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path

from workbench.errors import WorkbenchError

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
CHECKSUMS = "checksums.json"
CHECKSUMMED = ("config.json", *TOKENIZER_FILES, "merges.txt")  # besides the weight files


def check_checkpoint(folder: Path, repair: str = "") -> None:
    """Raise WorkbenchError if `folder` lacks config or weights, a safetensors file is damaged, or a file
    differs from its checksum in checksums.json; `repair` says how to restore the folder's files."""
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
    if (folder / CHECKSUMS).is_file():
        verify_checksums(folder, repair)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksums(folder: Path) -> Path:
    """Record the size and sha256 of the folder's weight, config and tokenizer files in checksums.json."""
    files = [p for pattern in WEIGHT_PATTERNS for p in sorted(folder.glob(pattern))]
    files += [folder / name for name in CHECKSUMMED if (folder / name).is_file()]
    body = {
        "about": "sha256 of the files that define this model, written with it; the workbench checks them "
        "on every load (workbench/models/checkpoint.py)",
        "algorithm": "sha256",
        "files": {p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in files},
    }
    path, tmp = folder / CHECKSUMS, folder / f".{CHECKSUMS}.tmp"
    tmp.write_text(json.dumps(body, indent=2) + "\n")
    tmp.replace(path)  # atomic: a concurrent load reads the old record or the new one, never half of one
    return path


def verify_checksums(folder: Path, repair: str = "") -> None:
    """Raise WorkbenchError naming the first file whose size or sha256 differs from checksums.json."""
    record = folder / CHECKSUMS
    repair = repair or "Restore the file from where the checkpoint came from, or re-create the checkpoint."
    try:
        files = json.loads(record.read_text())["files"]
        entries = [(name, int(e["bytes"]), str(e["sha256"])) for name, e in files.items()]
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise WorkbenchError(f"Damaged checkpoint: {record} is unreadable ({err}). {repair}") from None
    for name, size, sha256 in entries:
        path = folder / name
        if Path(name).name != name:
            raise WorkbenchError(f"Damaged checkpoint: {record} names {name!r}, not a file of {folder}.")
        if not path.is_file():
            raise WorkbenchError(f"Damaged checkpoint: {path}, listed in {record}, is missing. {repair}")
        actual = path.stat().st_size
        if actual != size or file_sha256(path) != sha256:
            what = f"{actual} bytes, not {size}" if actual != size else "its sha256 differs"
            raise WorkbenchError(
                f"Damaged checkpoint: {path} does not match its checksum in {record} ({what}): its bytes "
                f"changed after the model was written. {repair}"
            )


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
