"""`transcoder train --tokens N` trains N tokens, or says how many it trained and why, and records both."""

from __future__ import annotations

import json

import pytest

from workbench.cli import main
from workbench.corpus import load_corpus


@pytest.mark.parametrize("tokens, trained", [(1024, 1024), (1000, 768), (100, 256)])
def test_tokens_trained_are_said_and_recorded(tokens, trained, checkpoints, tmp_path, capsys):
    text = tmp_path / "mine.txt"
    text.write_text(" ".join(doc.text for doc in load_corpus("pydocs", "heldout")[:4]))
    out = tmp_path / "tc"
    args = ["transcoder", "train", "--model", str(checkpoints["gpt2"]), "--text", str(text)]
    args += ["--context", "32", "--width", "64", "--k", "4", "--batch-tokens", "256"]
    assert main([*args, "--tokens", str(tokens), "--out", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    body = json.loads(captured.out)
    assert (body["tokens"], body["tokens_requested"]) == (trained, tokens)
    settings = json.loads((out / "results.json").read_text())["results"][0]["provenance"]["settings"]
    assert (settings["tokens_trained"], settings["tokens_requested"]) == (trained, tokens)
    if trained == tokens:
        assert settings["tokens_note"] is None and "note: trained" not in captured.err
    else:
        assert settings["tokens_note"].startswith(f"trained {trained} tokens")
        assert f"note: trained {trained} tokens" in captured.err and "(--batch-tokens)" in captured.err
