"""Where calibration tokens come from (workbench/calibration.py): the corpus in use, never a fixed one."""

from __future__ import annotations

import gzip
import json

import pytest

from workbench.calibration import calibration_source, calibration_windows, train_split_of
from workbench.corpus import CORPORA, CorpusSpec, load_corpus
from workbench.errors import WorkbenchError


def write_corpus(folder, splits=("train", "heldout")):
    """A small named corpus: each split a few pydocs documents relabelled with the split's own domain."""
    folder.mkdir(parents=True, exist_ok=True)
    docs = load_corpus("pydocs", "heldout")[:12]
    for n, split in enumerate(splits):
        with gzip.open(folder / f"{split}.jsonl.gz", "wt", encoding="utf-8") as f:
            for doc in docs[n * 6 : n * 6 + 6]:
                row = {"id": f"{split}-{doc.id}", "domain": f"{split}-text", "text": doc.text}
                f.write(json.dumps(row) + "\n")
    return CorpusSpec(folder.name, folder, tuple(splits), "test")


@pytest.fixture
def mini(tmp_path, monkeypatch):
    monkeypatch.setitem(CORPORA._entries, "mini", write_corpus(tmp_path / "mini"))
    monkeypatch.setitem(CORPORA._entries, "evalonly", write_corpus(tmp_path / "evalonly", ("heldout",)))
    return "mini"


def test_default_is_the_train_split_of_the_corpus_in_use(mini):
    assert calibration_source().corpus == "pydocs:train"  # the shipped default, unchanged
    assert calibration_source("pydocs:heldout").corpus == "pydocs:train"
    for corpus in ("mini", "mini:heldout"):
        source = calibration_source(corpus)
        assert source.corpus == "mini:train" and source.warning is None
        assert source.describe() == {
            "calibration_source": "mini:train",
            "calibration_rule": f"the train split of --corpus {corpus}",
        }
    assert train_split_of("mini:heldout") == "mini:train"


def test_explicit_calibration_named_or_files(mini, tmp_path):
    assert calibration_source("pydocs", calibration=["mini"]).corpus == "mini:train"
    assert calibration_source("pydocs", calibration=["mini:heldout"]).corpus == "mini:heldout"
    text = tmp_path / "mine.txt"
    text.write_text("some words of my own " * 40)
    source = calibration_source(text=[str(tmp_path / "other.txt")], calibration=[str(text)])
    assert source.text == (str(text),) and source.rule == "--calibration" and source.warning is None
    same = calibration_source(text=[str(text)], calibration=[str(text)])
    assert "measured --text files" in same.warning
    measured = calibration_source("mini:train", purpose="wanda's input norms")
    assert measured.warning == "wanda's input norms uses mini:train, the split being measured"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"text": ["a.txt"]}, r"--text files have no train split: give --calibration NAME\[:SPLIT\]"),
        ({"corpus": "evalonly"}, r"Corpus 'evalonly' has no train split to calibrate on"),
        ({"calibration": ["mini:test"]}, r"corpus 'mini' has no split 'test'; its splits: train, heldout"),
        ({"calibration": ["no-such-thing"]}, r"neither a file nor a named corpus \(named corpora: pydocs"),
    ],
)
def test_no_silent_guess(mini, kwargs, message):
    with pytest.raises(WorkbenchError, match=message):
        calibration_source(**kwargs)


def test_windows_come_from_the_source_and_say_so(mini, gpt2_handle):
    windows = calibration_windows(gpt2_handle, calibration_source("mini"), context=16, n_tokens=64, seed=1)
    assert windows.domains == ["train-text"] and windows.n_tokens == 64
    assert windows.slice_info["corpus"] == "mini" and windows.slice_info["split"] == "train"
    assert windows.slice_info["calibration_source"] == "mini:train"
