"""A result's headline: its top-level figures for the runs list (not part of its JSON)."""

from __future__ import annotations

import math
import warnings

from workbench.lab.index import merged_headline
from workbench.results import GenericResult, headline_figures


def generic(kind: str, **fields) -> GenericResult:
    provenance = {"model": {"name": "m"}, "data": {}, "definition": "d"}
    return GenericResult.from_dict({"kind": kind, **fields, "provenance": provenance})


def test_numbers_and_short_words_in_order():
    fields = {
        "kind": "k", "model": "tiny-relu", "provenance": {"x": 1}, "tokens": 2048, "loss": 3.5,
        "definition": "exact_zero", "note": "a long sentence that explains something odd about the run",
        "complete": True, "knee": None, "nan": math.nan, "layers": [1, 2], "by_domain": {"a": 1},
        "multi": "two\nlines", "empty": "",
    }  # fmt: skip
    assert headline_figures(fields) == {"tokens": 2048, "loss": 3.5, "definition": "exact_zero"}


def test_at_most_eight_figures():
    fields = {f"f{i}": i for i in range(20)}
    assert list(headline_figures(fields)) == [f"f{i}" for i in range(8)]


def test_results_have_a_headline_that_stays_out_of_their_json():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = generic("lab_kind", score=0.5, name="x")
    assert result.headline() == {"score": 0.5, "name": "x"}
    assert "headline" not in result.to_dict()


def test_a_run_headline_puts_the_main_last_result_first():
    facts, evaluation = generic("facts", tokens=10, params=7), generic("evaluation", tokens=20, loss=3.0)
    assert merged_headline([facts, evaluation]) == {"tokens": 20, "loss": 3.0, "params": 7}


def test_a_kind_can_override_its_headline():
    class Overridden(GenericResult):
        def headline(self):
            return {"summary": 1}

    result = Overridden.from_dict({"kind": "x", "a": 5, "provenance": {}})
    assert merged_headline([result]) == {"summary": 1}
