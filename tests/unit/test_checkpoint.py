import shutil

import pytest

from workbench.errors import WorkbenchError
from workbench.models import load_model
from workbench.models.checkpoint import check_checkpoint


def test_intact_checkpoint_passes(checkpoints):
    check_checkpoint(checkpoints["gpt2"])


def test_truncated_weights_are_named(checkpoints, tmp_path):
    folder = shutil.copytree(checkpoints["gpt2"], tmp_path / "broken")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(WorkbenchError, match=r"Damaged checkpoint: .*model\.safetensors.*truncated"):
        load_model(str(folder), progress=False)


def test_garbage_header_is_named(checkpoints, tmp_path):
    folder = shutil.copytree(checkpoints["gpt2"], tmp_path / "garbage")
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(WorkbenchError, match=r"model\.safetensors has an unreadable header"):
        check_checkpoint(folder)


def test_missing_weights_are_named(checkpoints, tmp_path):
    folder = shutil.copytree(checkpoints["gpt2"], tmp_path / "noweights")
    (folder / "model.safetensors").unlink()
    with pytest.raises(WorkbenchError, match=r"Missing weights: no model\.safetensors .* in .*noweights"):
        load_model(str(folder), progress=False)


def test_missing_config(tmp_path):
    with pytest.raises(WorkbenchError, match=r"config\.json is missing"):
        check_checkpoint(tmp_path)


def test_missing_tokenizer_is_named(checkpoints, tmp_path):
    folder = shutil.copytree(checkpoints["gpt2"], tmp_path / "notok")
    (folder / "tokenizer.json").unlink()
    with pytest.raises(WorkbenchError, match=r"Missing tokenizer: none of tokenizer\.json.* in .*notok"):
        check_checkpoint(folder)


def test_a_missing_folder_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(WorkbenchError, match=r"Checkpoint folder .*nope not found"):
        load_model(str(tmp_path / "nope"), progress=False)
    with pytest.raises(WorkbenchError, match=r"Checkpoint folder nope-ckpt not found"):
        load_model("./nope-ckpt", progress=False)


def test_unavailable_device_is_a_clear_error(checkpoints, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(WorkbenchError, match=r"no CUDA GPU; use --device cpu"):
        load_model(str(checkpoints["gpt2"]), device="cuda", progress=False)
    with pytest.raises(WorkbenchError, match=r"Unknown device 'tpu9'"):
        load_model(str(checkpoints["gpt2"]), device="tpu9", progress=False)
