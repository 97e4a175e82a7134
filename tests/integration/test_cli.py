"""The command line: common flags, --json purity, run folders and the report."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from workbench.cli import main
from workbench.runs import read_run


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "workbench.cli", *args], capture_output=True, text=True, timeout=600
    )


def test_evaluate_json_is_the_only_thing_on_stdout(checkpoints, tmp_path):
    proc = run_cli(
        "evaluate",
        "--model",
        str(checkpoints["gpt2"]),
        "--tokens",
        "256",
        "--context",
        "32",
        "--json",
        "--out",
        str(tmp_path / "run"),
    )
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout, parse_constant=pytest.fail)  # the whole of stdout parses, strictly
    assert set(body) >= {"model", "tokens", "loss", "perplexity", "accuracy", "by_domain", "provenance"}
    assert body["tokens"] == 8 * 31 and set(body["by_domain"]) <= {"code", "prose"}
    assert all(set(v) == {"loss", "perplexity", "accuracy", "tokens"} for v in body["by_domain"].values())
    run = read_run(tmp_path / "run")
    assert run.manifest["status"] == "complete" and run.find("evaluation").loss == pytest.approx(body["loss"])


def test_report_writes_a_run_folder_whose_results_parse(checkpoints, tmp_path, capsys):
    out = tmp_path / "report"
    assert (
        main(
            [
                "report",
                "--model",
                str(checkpoints["mixtral"]),
                "--tokens",
                "256",
                "--context",
                "32",
                "--out",
                str(out),
                "--seed",
                "3",
            ]
        )
        == 0
    )
    assert f"report: {(out / 'report.html').resolve()}" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    kinds = [r["kind"] for r in results["results"]]
    assert kinds == ["model_facts", "corpus_facts", "evaluation", "experts"]  # a MoE report has routing
    manifest = json.loads((out / "manifest.json").read_text())
    assert (
        manifest["seed"] == 3 and manifest["model"]["moe"] is True and manifest["data"]["corpus"] == "pydocs"
    )
    assert {"torch", "transformers", "transformer-lens"} <= set(manifest["packages"])
    html = (out / "report.html").read_text()
    assert "<script src" not in html and "https://cdn" not in html
    assert html.count('class="chart"') == 8  # 5 of the evaluation, 3 of the routing section


def test_report_folder_is_named_after_the_resolved_model(checkpoints, tmp_path, monkeypatch, capsys):
    """Without --model and --out, the new run folder carries the model the default resolved to."""
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    resolved = str(checkpoints["gpt2"])
    monkeypatch.setattr("workbench.commands.flags.default_model", lambda progress=True: resolved)
    assert main(["report", "--tokens", "64", "--context", "16", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    (folder,) = (tmp_path / "runs").iterdir()
    assert folder.name.endswith("-report-gpt2"), folder.name  # was "...-report-default"
    assert body["run"] == str(folder.resolve())


def test_models_json_lists_named_models_with_facts(capsys):
    assert main(["models", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    names = {m["name"]: m for m in body["models"]}
    assert {"tiny-relu", "tiny-moe", "smollm2-135m"} <= set(names)
    assert names["tiny-moe"]["facts"]["n_experts"] == 8 and names["smollm2-135m"]["facts"]["n_layers"] == 30


def test_user_errors_exit_2_with_a_message(tmp_path, capsys):
    assert main(["evaluate", "--model", "no-such-model", "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Unknown model 'no-such-model'" in captured.err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "precious.txt").write_text("keep me")
    assert main(["report", "--model", "tiny-relu", "--out", str(tmp_path / "taken")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_own_text_files(checkpoints, tmp_path, capsys):
    (tmp_path / "mine.jsonl").write_text(
        "\n".join(json.dumps({"text": "hello world " * 40, "domain": d}) for d in ("mail", "chat"))
    )
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(checkpoints["gpt2"]),
                "--text",
                str(tmp_path / "mine.jsonl"),
                "--context",
                "16",
                "--tokens",
                "64",
                "--json",
            ]
        )
        == 0
    )
    body = json.loads(capsys.readouterr().out)
    assert set(body["by_domain"]) <= {"mail", "chat"} and body["provenance"]["data"]["text_files"]


def test_a_failed_run_is_marked_failed(tmp_path, capsys):
    assert main(["evaluate", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "run")]) == 2
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "not found" in manifest["error"]
    with pytest.raises(Exception, match="incomplete"):
        read_run(tmp_path / "run")


def test_a_domain_missing_from_the_sample_is_left_out_not_nan(checkpoints, tmp_path, capsys):
    (tmp_path / "one.jsonl").write_text(
        json.dumps({"text": "word " * 200, "domain": "a"})
        + "\n"
        + json.dumps({"text": "x", "domain": "b"})
        + "\n"
    )
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(checkpoints["gpt2"]),
                "--text",
                str(tmp_path / "one.jsonl"),
                "--context",
                "16",
                "--tokens",
                "16",
                "--json",
            ]
        )
        == 0
    )
    body = json.loads(capsys.readouterr().out, parse_constant=pytest.fail)  # strict JSON: no NaN anywhere
    assert list(body["by_domain"]) == ["a"]


def test_bad_numbers_are_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--batch-size", "0"])
    assert "must be a positive integer" in capsys.readouterr().err
