"""Bad input gets a clear error naming the problem, never a traceback or a silent guess (issue 13, item 4).

One table: each row builds its input in tmp_path and gives either a command line (run through
`workbench.cli.main`: it must exit non-zero with the fragment in its one-line message, or exit 0 when the
row expects a correct result) or a callable (it must raise WorkbenchError with the fragment). Any other
exception escapes `main` and fails the row: that is the traceback a user would have seen.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from workbench.cli import main
from workbench.errors import WorkbenchError
from workbench.paths import demo_model_dir

TINY = demo_model_dir("tiny-relu")


def transcoder(skip: bool = False):
    from workbench.transcoders.model import Transcoder, TranscoderConfig

    cfg = TranscoderConfig(256, 256, 64, "topk", k=4, skip=skip, model="tiny-relu", layer=1)
    return Transcoder(cfg, seed=0)


def workbench_folder(tmp_path: Path, **changes) -> Path:
    """A saved workbench transcoder whose config.json gets `changes` (None deletes a key)."""
    from workbench.transcoders.files import save_transcoder

    folder = tmp_path / "tc"
    save_transcoder(transcoder(), folder)
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        config.pop(key) if value is None else config.__setitem__(key, value)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def saelens_folder(tmp_path: Path, ours: bool, **cfg_changes) -> Path:
    """A width-64 transcoder saved for SAE-Lens, `cfg_changes` made to cfg.json; workbench.json if ours."""
    from workbench.transcoders.saelens import save_saelens

    folder = save_saelens(transcoder(), tmp_path / "sae")
    if not ours:
        (folder / "workbench.json").unlink()
    cfg = json.loads((folder / "cfg.json").read_text()) | cfg_changes
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def edit_file(tmp_path: Path, text: str) -> list[str]:
    (tmp_path / "edit.json").write_text(text)
    return ["replay", "--model", "tiny-relu", "--edit", str(tmp_path / "edit.json"), "--tokens", "128"]


def evaluate_text(path: Path) -> list[str]:
    return ["evaluate", "--model", "tiny-relu", "--text", str(path), "--tokens", "128", "--json"]


def flip_byte(path: Path, offset_from_end: int = 100) -> None:
    """Change one byte inside the tensor data (the size and the safetensors header stay valid)."""
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x01
    path.write_bytes(bytes(data))


def demo_copy(tmp_path: Path, monkeypatch, checksums: bool = True) -> Path:
    """tiny-relu copied into tmp_path/models and served as the named model `tiny-relu`."""
    folder = shutil.copytree(TINY, tmp_path / "models" / "tiny-relu")
    if not checksums:
        (folder / "checksums.json").unlink(missing_ok=True)
    monkeypatch.setattr("workbench.models.sources.demo_model_dir", lambda name: tmp_path / "models" / name)
    return folder


# --- rows -----------------------------------------------------------------------------------------------


def levels_not_a_number(tmp_path, monkeypatch):
    return ["essential", "--model", "tiny-relu", "--tokens", "128", "--levels", "0.5,abc"]


def levels_out_of_range(tmp_path, monkeypatch):
    return ["essential", "--model", "tiny-relu", "--tokens", "128", "--levels", "0,1.5"]


def edit_nested_100000_deep(tmp_path, monkeypatch):
    return edit_file(tmp_path, "[" * 100_000 + "]" * 100_000)


def edit_tau_nan(tmp_path, monkeypatch):
    return edit_file(tmp_path, '{"kind": "threshold", "layer": 0, "tau": NaN}')


def edit_tau_overflows_to_infinity(tmp_path, monkeypatch):
    return edit_file(tmp_path, '{"kind": "threshold", "layer": 0, "tau": 1e999}')


def edit_layer_infinite(tmp_path, monkeypatch):
    return edit_file(tmp_path, '{"kind": "topk", "layer": 1e999, "k": 4}')


def saelens_d_sae_10_to_12(tmp_path, monkeypatch):
    folder = saelens_folder(tmp_path, ours=False, d_sae=10**12)
    return ["transcoder", "eval", str(folder), "--model", "tiny-relu", "--tokens", "128"]


def saelens_config_disagrees_with_workbench_json(tmp_path, monkeypatch):
    folder = saelens_folder(tmp_path, ours=True, d_sae=128)
    return ["transcoder", "eval", str(folder), "--model", "tiny-relu", "--tokens", "128"]


def transcoder_unknown_config_key(tmp_path, monkeypatch):
    folder = workbench_folder(tmp_path, colour="red")
    return ["transcoder", "eval", str(folder), "--model", "tiny-relu", "--tokens", "128"]


def transcoder_missing_config_key(tmp_path, monkeypatch):
    folder = workbench_folder(tmp_path, width=None)
    return ["transcoder", "eval", str(folder), "--model", "tiny-relu", "--tokens", "128"]


def transcoder_config_width_mismatches_weights(tmp_path, monkeypatch):
    folder = workbench_folder(tmp_path, width=128)
    return ["transcoder", "eval", str(folder), "--model", "tiny-relu", "--tokens", "128"]


def transcoder_too_big_for_memory(tmp_path, monkeypatch):
    from workbench.transcoders.run import load_any

    folder = workbench_folder(tmp_path)
    monkeypatch.setattr("psutil.virtual_memory", lambda: SimpleNamespace(available=1000))
    return lambda: load_any(folder)


def checkpoint_pickle_refused_by_weights_only(tmp_path, monkeypatch):
    from workbench.transcoders.files import save_transcoder
    from workbench.transcoders.train import TrainConfig, Trainer

    class RunsCode:  # unpickling it would create the marker file
        def __reduce__(self):
            return (open, (str(tmp_path / "code-ran"), "w"))

    folder = tmp_path / "checkpoint"
    save_transcoder(transcoder(), folder)
    torch.save({"optimiser": RunsCode(), "last_fired": torch.zeros(64)}, folder / "optim.pt")
    (folder / "state.json").write_text(json.dumps({"state": {}}))
    trainer = Trainer(transcoder(), TrainConfig())

    def resume():
        try:
            trainer.load(folder)
        finally:
            assert not (tmp_path / "code-ran").exists()

    return resume


def context_longer_than_positions(tmp_path, monkeypatch):
    return ["evaluate", "--model", "tiny-relu", "--context", "256", "--tokens", "256"]


def random_inputs_context_longer_than_positions(tmp_path, monkeypatch):
    return ["sparsity", "--model", "tiny-relu", "--inputs", "random", "--context", "256", "--tokens", "256"]


def text_binary(tmp_path, monkeypatch):
    path = tmp_path / "weights.txt"
    path.write_bytes(random.Random(0).randbytes(1 << 16))
    return evaluate_text(path)


def text_nul_bytes(tmp_path, monkeypatch):  # decodes as UTF-8 without an error, yet is not text
    path = tmp_path / "zeros.txt"
    path.write_bytes(bytes(1 << 14))
    return evaluate_text(path)


def jsonl_binary(tmp_path, monkeypatch):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(random.Random(1).randbytes(1 << 14))
    return evaluate_text(path)


def text_few_latin1_bytes(tmp_path, monkeypatch):  # a correct result, and a note of the replaced bytes
    path = tmp_path / "notes.txt"
    path.write_bytes(("The café opens at nine and closes at six. " * 60).encode("latin-1"))
    return evaluate_text(path)


def local_model_flipped_byte(tmp_path, monkeypatch):
    from workbench.models import load_model

    folder = shutil.copytree(TINY, tmp_path / "copy")
    flip_byte(folder / "model.safetensors")
    return lambda: load_model(str(folder), device="cpu", progress=False)


def named_model_flipped_byte(tmp_path, monkeypatch):
    flip_byte(demo_copy(tmp_path, monkeypatch) / "model.safetensors")
    return ["evaluate", "--model", "tiny-relu", "--tokens", "128"]


def named_model_tokenizer_changed(tmp_path, monkeypatch):
    path = demo_copy(tmp_path, monkeypatch) / "tokenizer.json"
    path.write_text(path.read_text().replace('"Ġthe"', '"Ġteh"', 1))
    return ["evaluate", "--model", "tiny-relu", "--tokens", "128"]


def named_model_without_checksums(tmp_path, monkeypatch):
    demo_copy(tmp_path, monkeypatch, checksums=False)
    return ["evaluate", "--model", "tiny-relu", "--tokens", "128"]


def converted_smollm2_flipped_byte(tmp_path, monkeypatch):
    """A converted-SmolLM2 cache folder (tiny-relu's files stand in): checksums recorded, then damaged."""
    from workbench.models import MODELS

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "cache" / "smollm2-135m"
    folder.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TINY / name, folder / name)
    (folder / "SOURCE.json").write_text("{}")
    MODELS.get("smollm2-135m").resolve(False)  # a conversion from before checksums: recorded now
    flip_byte(folder / "model.safetensors")
    return ["evaluate", "--model", "smollm2-135m", "--tokens", "128"]


OK = 0  # expected exit code of a row that must give a correct result
ROWS = [
    (levels_not_a_number, 2, "argument --levels: 'abc' is not a sparsity"),
    (levels_out_of_range, 2, "argument --levels: '1.5' is not a sparsity"),
    (edit_nested_100000_deep, 2, "Edits nest more than 16 levels"),
    (edit_tau_nan, 2, "Edits contain NaN"),
    (edit_tau_overflows_to_infinity, 2, "threshold: tau must be a finite number, got inf"),
    (edit_layer_infinite, 2, "topk: layer must be an integer, got inf"),
    (saelens_d_sae_10_to_12, 2, "W_enc is [256, 64], not [256, 1000000000000]"),
    (saelens_config_disagrees_with_workbench_json, 2, "describe different transcoders"),
    (transcoder_unknown_config_key, 2, "unknown key(s) ['colour']"),
    (transcoder_missing_config_key, 2, "missing key(s) ['width']"),
    (transcoder_config_width_mismatches_weights, 2, "W_dec is [64, 256], not [128, 256]"),
    (transcoder_too_big_for_memory, None, "needs about"),
    (checkpoint_pickle_refused_by_weights_only, None, "optim.pt is not safe to load"),
    (context_longer_than_positions, 2, "A context of 256 tokens is longer than tiny-relu's 128 positions"),
    (
        random_inputs_context_longer_than_positions,
        2,
        "A context of 256 tokens is longer than tiny-relu's 128 positions",
    ),
    (text_binary, 2, "weights.txt is not UTF-8 text"),
    (text_nul_bytes, 2, "zeros.txt is not UTF-8 text: 100% of its 16,384 bytes"),
    (jsonl_binary, 2, "rows.jsonl is not UTF-8 text"),
    (text_few_latin1_bytes, OK, "60 of 2,520 bytes are not UTF-8; each is read as U+FFFD"),
    (local_model_flipped_byte, None, "model.safetensors does not match its checksum"),
    (named_model_flipped_byte, 2, "git checkout -- data/models/tiny-relu"),
    (named_model_tokenizer_changed, 2, "tokenizer.json does not match its checksum"),
    (named_model_without_checksums, 2, "checksums.json is missing"),
    (converted_smollm2_flipped_byte, 2, "it is converted anew"),
]


@pytest.mark.parametrize(("make", "code", "fragment"), ROWS, ids=[row[0].__name__ for row in ROWS])
def test_bad_input(make, code, fragment, tmp_path, monkeypatch, capsys):
    action = make(tmp_path, monkeypatch)
    if callable(action):  # an API call: WorkbenchError with the fragment
        with pytest.raises(WorkbenchError) as raised:
            action()
        message = str(raised.value)
    else:  # a command line: that exit code, the fragment on stderr, no traceback
        try:
            returned = main(action)
        except SystemExit as exit_:  # argparse's refusals
            returned = exit_.code
        message = capsys.readouterr().err
        assert returned == code, message
        assert "Traceback" not in message
    assert fragment in message
    assert "weights_only=False" not in message and "safe_globals" not in message  # no advice to unpickle
