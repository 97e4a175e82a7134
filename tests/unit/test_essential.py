"""Essential-sparsity sweeps: weights restored bitwise, s* and knee as defined, JSON fields."""

from __future__ import annotations

import json

import pytest
import torch

from workbench.cli import main
from workbench.corpus import load_corpus, make_windows
from workbench.essential.result import explain, knee
from workbench.essential.run import EssentialSettings, sweep
from workbench.models import load_model


def test_sweep_restores_weights_and_finds_s_star(checkpoints):
    handle = load_model(str(checkpoints["llama"]), progress=False)
    windows = make_windows(load_corpus()[:3], handle.tokenizer, 16, handle.separator_token_id).select(64)
    before = {k: v.clone() for k, v in handle.model.original_model.state_dict().items()}
    settings = EssentialSettings(pattern="global", criterion="magnitude", tolerance=0.01, refine=2)
    result = sweep(handle, windows, settings, progress=False)
    after = handle.model.original_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # bitwise restored
    dense = result.curve[0]["loss"]
    assert result.curve[0]["sparsity"] == 0.0 and result.curve[0]["pruned_weights"] == 0
    passing = [p["sparsity"] for p in result.curve if p["loss"] <= dense * 1.01]
    assert result.essential_sparsity == max(passing)  # the largest evaluated level within tolerance
    assert result.knee == knee(result.curve)
    n = result.provenance.settings["n_weights"]
    assert all(p["pruned_weights"] == round(p["sparsity"] * n) for p in result.curve)


def test_knee_is_the_largest_second_difference():
    curve = [
        {"sparsity": s, "loss": loss}
        for s, loss in [(0, 1.0), (0.2, 1.0), (0.4, 1.1), (0.6, 2.0), (0.8, 3.0)]
    ]
    assert knee(curve) == 0.4  # second differences: 0.1, 0.8, 0.1


def test_nm_sweep_has_two_levels(checkpoints):
    handle = load_model(str(checkpoints["gpt2"]), progress=False)
    windows = make_windows(load_corpus()[:3], handle.tokenizer, 16, handle.separator_token_id).select(32)
    result = sweep(handle, windows, EssentialSettings(pattern="2:4", criterion="magnitude"), progress=False)
    assert [p["sparsity"] for p in result.curve] == [0.0, 0.5]


def test_essential_cli_json(capsys):
    assert (
        main(
            [
                "essential",
                "--model",
                "tiny-relu",
                "--tokens",
                "512",
                "--levels",
                "0,0.3,0.6",
                "--refine",
                "1",
                "--json",
            ]
        )
        == 0
    )
    body = json.loads(capsys.readouterr().out)
    assert {"model", "pattern", "criterion", "tolerance", "essential_sparsity", "knee", "curve"} <= set(body)
    assert body["pattern"] == "global" and body["criterion"] == "magnitude" and body["tolerance"] == 0.01
    assert {"sparsity", "loss", "perplexity", "accuracy"} <= set(body["curve"][0])
    assert 0.0 <= body["essential_sparsity"] <= 0.6


@pytest.mark.parametrize("criterion", ["wanda"])
def test_wanda_defaults_to_rowwise_with_train_calibration(criterion, capsys):
    assert (
        main(
            [
                "essential",
                "--model",
                "tiny-relu",
                "--tokens",
                "256",
                "--levels",
                "0,0.5",
                "--refine",
                "0",
                "--criterion",
                criterion,
                "--calibration-tokens",
                "256",
                "--json",
            ]
        )
        == 0
    )
    body = json.loads(capsys.readouterr().out)
    assert body["pattern"] == "rowwise" and body["provenance"]["settings"]["calibration"]["split"] == "train"


def test_explain_says_why_an_nm_sweep_gives_s_star_0_and_no_knee():
    """The 2:4 case of tiny-relu: one level, 0.5, whose loss rises 4 % against a 1 % tolerance."""
    curve = [{"sparsity": 0.0, "loss": 3.8514}, {"sparsity": 0.5, "loss": 4.0076}]
    note = explain(curve, 0.01, 0.0, "2:4", fixed_sparsity=0.5)
    assert "only one sparsity level, 1 - N/M = 0.5" in note
    assert "+4.06% over the dense 3.8514" in note and "tolerance of 1.00%" in note and "s* = 0." in note
    assert "knee needs at least 3 levels and the sweep has 2" in note


def test_explain_covers_the_other_odd_outcomes_and_stays_quiet_otherwise():
    def curve(*points):
        return [{"sparsity": s, "loss": loss} for s, loss in points]

    within = explain(curve((0, 1.0), (0.5, 1.001)), 0.01, 0.5, "2:4", fixed_sparsity=0.5)
    assert "s* = 0.5, the pattern's only level" in within
    grid = curve((0, 1.0), (0.1, 1.001), (0.2, 1.002), (0.3, 1.003))
    assert "lower bound: none larger was tried" in explain(grid, 0.01, 0.3, "global")
    steep = curve((0, 1.0), (0.1, 1.5), (0.2, 2.0), (0.05, 1.2), (0.025, 1.1))
    assert "At the smallest level tried, 0.025," in explain(steep, 0.01, 0.0, "global")
    usual = curve((0, 1.0), (0.1, 1.001), (0.2, 1.5), (0.15, 1.002))
    assert explain(usual, 0.01, 0.15, "global") == ""


def test_an_nm_sweep_explains_itself_in_json_text_and_report(checkpoints, tmp_path, capsys):
    from html import escape

    from workbench.report import write_report

    flags = ["essential", "--model", str(checkpoints["gpt2"]), "--pattern", "2:4", "--tokens", "64"]
    flags += ["--context", "16"]
    assert main([*flags, "--json", "--out", str(tmp_path / "run")]) == 0
    body = json.loads(capsys.readouterr().out)
    assert [p["sparsity"] for p in body["curve"]] == [0.0, 0.5] and body["knee"] is None
    assert "only one sparsity level" in body["note"] and "knee needs at least 3 levels" in body["note"]
    assert main(flags) == 0
    assert "note: The 2:4 pattern has only one sparsity level" in capsys.readouterr().out
    assert escape(body["note"]) in write_report(tmp_path / "run").read_text()
