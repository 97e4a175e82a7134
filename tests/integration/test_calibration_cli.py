"""Every command that calibrates does so on the corpus in use (or --calibration), and records it."""

from __future__ import annotations

import gzip
import json

import pytest

from workbench.cli import main
from workbench.corpus import CORPORA, CorpusSpec, load_corpus
from workbench.runs import read_run

SMALL = ["--tokens", "64", "--context", "16", "--batch-size", "4"]
# command-specific flags, and where its result keeps the calibration windows' slice_info
COMMANDS = {
    "essential": (
        ["--criterion", "wanda", "--levels", "0,0.5", "--refine", "0", "--calibration-tokens", "64"],
        lambda p: [p["settings"]["calibration"]],
    ),
    "sparsity": (
        ["--definition", "magnitude@0.5", "--inputs", "heldout,train", "--calibration-tokens", "64"],
        lambda p: [p["settings"]["calibration"], p["settings"]["train_inputs"]],
    ),
    "moefy": (["--experts", "2", "--train-tokens", "64"], lambda p: [p["data"]["router_training"]]),
    "finercut": (
        ["--calibration-tokens", "32", "--max-share", "0.25"],
        lambda p: [p["data"]["calibration"]],
    ),
}


@pytest.fixture
def mini(tmp_path, monkeypatch):
    """A named corpus `mini` whose splits carry their own domain labels (train-text, heldout-text)."""
    folder = tmp_path / "mini"
    folder.mkdir()
    docs = load_corpus("pydocs", "heldout")[:12]
    for n, split in enumerate(("train", "heldout")):
        with gzip.open(folder / f"{split}.jsonl.gz", "wt", encoding="utf-8") as f:
            for doc in docs[n * 6 : n * 6 + 6]:
                f.write(json.dumps({"id": doc.id, "domain": f"{split}-text", "text": doc.text}) + "\n")
    monkeypatch.setitem(CORPORA._entries, "mini", CorpusSpec("mini", folder, ("train", "heldout"), "test"))


@pytest.mark.parametrize("command", list(COMMANDS))
def test_calibration_follows_the_corpus_and_is_recorded(command, mini, checkpoints, tmp_path, capsys):
    flags, calibrations = COMMANDS[command]
    model = ["--model", str(checkpoints["gpt2"])]
    assert main([command, *model, *SMALL, *flags, "--corpus", "mini", "--out", str(tmp_path / "a")]) == 0
    (result,) = read_run(tmp_path / "a").results
    for info in calibrations(result.provenance.__dict__):
        assert (info["corpus"], info["split"]) == ("mini", "train")
        assert info["calibration_source"] == "mini:train"
        assert info["calibration_rule"] == "the train split of --corpus mini"

    # own text: no train split, so no silent guess; --calibration names the source, which is recorded
    text = tmp_path / "mine.txt"
    text.write_text(" ".join(doc.text for doc in load_corpus("pydocs", "heldout")[:4]))
    capsys.readouterr()
    own = [command, *model, *SMALL, *flags, "--text", str(text)]
    assert main([*own, "--out", str(tmp_path / "b")]) == 2
    assert "give --calibration NAME[:SPLIT]" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()  # refused before anything was written
    assert main([*own, "--calibration", "mini", "--out", str(tmp_path / "c")]) == 0
    (result,) = read_run(tmp_path / "c").results
    for info in calibrations(result.provenance.__dict__):
        assert info["calibration_source"] == "mini:train" and info["calibration_rule"] == "--calibration"
