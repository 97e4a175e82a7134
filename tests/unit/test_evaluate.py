"""Oracle: evaluation equals a hand computation of cross-entropy, position by position."""

import math

import pytest
import torch

from workbench.corpus import load_corpus, make_windows
from workbench.evaluate import evaluate


def test_matches_hand_computed_cross_entropy(gpt2_handle):
    docs = [d for d in load_corpus() if d.domain == "prose"][:1] + [
        d for d in load_corpus() if d.domain == "code"
    ][:1]
    windows = make_windows(docs, gpt2_handle.tokenizer, context=24, separator_id=0).select(24 * 6, seed=3)
    result = evaluate(gpt2_handle, windows, batch_size=4, progress=False)

    hf = gpt2_handle.model.original_model
    sums = {"prose": [0.0, 0, 0], "code": [0.0, 0, 0]}  # loss, correct, count
    with torch.no_grad():
        for w in range(windows.n_windows):
            logits = hf(windows.tokens[w : w + 1]).logits[0].double()
            for t in range(windows.context - 1):
                row = logits[t]
                target = int(windows.tokens[w, t + 1])
                log_z = math.log(sum(math.exp(v) for v in row.tolist()))
                domain = windows.domains[int(windows.domain[w, t + 1])]
                sums[domain][0] += log_z - row[target].item()
                sums[domain][1] += int(int(row.argmax()) == target)
                sums[domain][2] += 1
    total = sum(s[2] for s in sums.values())
    assert result.tokens == total == windows.n_windows * (windows.context - 1)
    assert result.loss == pytest.approx(sum(s[0] for s in sums.values()) / total, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(result.loss))
    assert result.accuracy == pytest.approx(sum(s[1] for s in sums.values()) / total)
    for domain, (loss, correct, count) in sums.items():
        if count:
            assert result.by_domain[domain].tokens == count
            assert result.by_domain[domain].loss == pytest.approx(loss / count, rel=1e-5)
            assert result.by_domain[domain].accuracy == pytest.approx(correct / count)
    assert sum(sum(h) for h in result.loss_histogram.values()) == total


def test_batch_size_does_not_change_the_numbers(gpt2_handle):
    windows = make_windows(load_corpus()[:5], gpt2_handle.tokenizer, context=32, separator_id=0).select(
        32 * 5
    )
    a = evaluate(gpt2_handle, windows, batch_size=1, progress=False)
    b = evaluate(gpt2_handle, windows, batch_size=5, progress=False)
    assert a.loss == pytest.approx(b.loss, rel=1e-6) and a.accuracy == b.accuracy
