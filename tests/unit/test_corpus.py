import json

import pytest
import torch

from tiny_checkpoints import corpus_tokenizer
from workbench.corpus import (
    Document,
    from_hf_dataset,
    load_corpus,
    make_windows,
    read_text_files,
)
from workbench.errors import WorkbenchError


def test_shipped_corpus_has_two_domains_and_disjoint_splits():
    train, heldout = load_corpus("pydocs", "train"), load_corpus("pydocs", "heldout")
    assert {d.domain for d in train} == {d.domain for d in heldout} == {"code", "prose"}
    assert not {d.id for d in train} & {d.id for d in heldout}


def test_windows_carry_document_domain_and_position():
    tok = corpus_tokenizer()
    docs = [
        Document("a", "prose", "The quick brown fox jumps over the lazy dog. " * 8),
        Document("b", "code", "def f(x):\n    return x + 1\n" * 10),
    ]
    w = make_windows(docs, tok, context=16, separator_id=0)
    ids_a = tok(docs[0].text, add_special_tokens=False)["input_ids"] + [0]
    ids_b = tok(docs[1].text, add_special_tokens=False)["input_ids"] + [0]
    stream = ids_a + ids_b
    n = len(stream) // 16
    assert w.tokens.shape == (n, 16)
    assert w.tokens.flatten().tolist() == stream[: n * 16]
    flat_doc, flat_dom, flat_pos = w.doc.flatten(), w.domain.flatten(), w.position.flatten()
    for i in range(n * 16):  # brute force: every token's metadata from the two streams
        in_a = i < len(ids_a)
        assert w.doc_ids[flat_doc[i]] == ("a" if in_a else "b")
        assert w.domains[flat_dom[i]] == ("prose" if in_a else "code")
        assert flat_pos[i] == (i if in_a else i - len(ids_a))


def test_selection_is_seeded_and_whole_windows():
    tok = corpus_tokenizer()
    w = make_windows(load_corpus()[:20], tok, context=32, separator_id=0)
    a, b, c = w.select(100, seed=1), w.select(100, seed=1), w.select(100, seed=2)
    assert a.n_windows == 4 and torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)
    assert a.slice_info["selection_seed"] == 1 and a.slice_info["windows"] == 4


def test_every_selection_is_a_seeded_permutation_that_mixes_domains():
    """Documents in corpus order (all prose, then all code): any prefix of a selection, the whole text's
    included, draws both domains in proportion, and the seed decides the order."""
    train = load_corpus("pydocs", "train")
    docs = [d for d in train if d.domain == "prose"][:60] + [d for d in train if d.domain == "code"][:8]
    w = make_windows(docs, corpus_tokenizer(), context=32, separator_id=0)
    shares = torch.bincount(w.domain.flatten().long(), minlength=2).double() / w.n_tokens
    assert 0.15 < shares.min() < 0.35  # both domains, the first ones in the text all of one
    assert (w.domain[:400] == w.domain[0, 0]).all()
    for seed in range(3):
        everything = w.select(None, seed=seed)
        assert everything.n_windows == w.n_windows  # all windows, each once: a permutation
        assert sorted(map(tuple, everything.tokens.tolist())) == sorted(map(tuple, w.tokens.tolist()))
        for part in (everything.domain[:400], w.select(400 * 32, seed=seed).domain):
            prefix = torch.bincount(part.flatten().long(), minlength=2).double() / part.numel()
            assert (prefix - shares).abs().max() < 0.1, (seed, prefix, shares)
    assert not torch.equal(w.select(None, seed=0).tokens, w.select(None, seed=1).tokens)
    assert torch.equal(w.select(None, seed=1).tokens, w.select(None, seed=1).tokens)


def test_user_text_and_jsonl(tmp_path):
    (tmp_path / "notes.txt").write_text("plain words " * 50)
    rows = [{"text": "first line of text " * 20, "domain": "mail"}, {"text": "second " * 30}]
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    docs = read_text_files([tmp_path / "notes.txt", tmp_path / "rows.jsonl"])
    assert [d.domain for d in docs] == ["text", "mail", "text"]
    (tmp_path / "bad.jsonl").write_text('{"body": "no text field"}\n')
    with pytest.raises(
        WorkbenchError, match=r"bad\.jsonl, line 1: expected a JSON object with a 'text' field"
    ):
        read_text_files([tmp_path / "bad.jsonl"])


def test_hf_style_dataset_rows():
    docs = from_hf_dataset(
        [{"text": "a b c", "lang": "en"}, {"text": "d e", "lang": "fr"}], domain_field="lang"
    )
    assert [(d.id, d.domain) for d in docs] == [("0", "en"), ("1", "fr")]


def test_too_little_text_is_a_clear_error():
    with pytest.raises(WorkbenchError, match="fewer than one window"):
        make_windows([Document("x", "t", "hi")], corpus_tokenizer(), context=64, separator_id=0)
