"""`workbench replay`, `workbench finercut` and `workbench bench replay` end to end on the demo models."""

from __future__ import annotations

import json

from workbench.cli import main

KEYS = {"edit", "first_layer", "ce_delta", "kl", "top1_agreement", "seconds", "full_forward_seconds"}


def run_json(capsys, argv) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_expert_mask_on_tiny_moe(tmp_path, capsys):
    edit = tmp_path / "edit.json"
    edit.write_text(json.dumps([{"kind": "expert_mask", "layer": 0, "experts": [5, 6]}]))
    body = run_json(
        capsys,
        [
            "replay",
            "--model",
            "tiny-moe",
            "--edit",
            str(edit),
            "--tokens",
            "256",
            "--generate",
            "4",
            "--json",
        ],
    )
    assert set(body) >= KEYS
    assert body["edit"] == [{"kind": "expert_mask", "layer": 0, "experts": [5, 6], "mode": "reroute"}]
    assert body["first_layer"] == 0 and body["ce_delta"] > 0.05 and 0 < body["top1_agreement"] < 1
    assert body["kl"] > 0 and body["seconds"] > 0 and body["full_forward_seconds"] > 0
    assert len(body["generation"]["edited_ids"]) == 4


def test_replay_run_folder_renders_in_the_report(tmp_path, capsys):
    out = tmp_path / "run"
    edit = '{"kind": "skip", "layer": 2, "target": "mlp"}'
    body = run_json(
        capsys,
        ["replay", "--model", "tiny-relu", "--edit", edit, "--tokens", "256", "--out", str(out), "--json"],
    )
    assert body["first_layer"] == 2 and body["ce_delta"] > 0
    assert body["resid_deviation"][2] == 0 and body["resid_deviation"][3] > 0
    report = tmp_path / "report"
    assert (
        main(
            ["report", "--model", "tiny-relu", "--tokens", "256", "--out", str(report), "--include", str(out)]
        )
        == 0
    )
    html = (report / "report.html").read_text()
    assert 'data-chart="resid_deviation"' in html and 'data-chart="per_token_kl"' in html


def test_bad_edit_file_is_a_clear_error(tmp_path, capsys):
    edit = tmp_path / "edit.json"
    edit.write_text('{"kind": "head_mask", "layer": 9, "heads": [0]}')
    assert main(["replay", "--model", "tiny-relu", "--edit", str(edit), "--tokens", "128"]) == 2
    assert "do not exist" in capsys.readouterr().err


def test_finercut_curve_on_tiny_relu(tmp_path, capsys):
    body = run_json(
        capsys,
        ["finercut", "--model", "tiny-relu", "--tokens", "512", "--calibration-tokens", "256", "--json"],
    )
    steps = body["steps"]
    assert len(steps) == 4 and [s["removed"] for s in steps] == [1, 2, 3, 4]  # half of 8 sublayers
    assert len({(s["layer"], s["sublayer"]) for s in steps}) == 4
    assert steps[-1]["loss"] > body["base_loss"]


def test_bench_replay_prints_every_part(capsys):
    body = run_json(
        capsys, ["bench", "replay", "--model", "tiny-relu", "--tokens", "256", "--batch-size", "2", "--json"]
    )
    assert [row["layer"] for row in body["prefix"]] == [1, 2, 3]  # n/4, n/2, 3n/4 of 4 layers
    assert all(0 < row["ideal"] < 1.5 and row["ratio"] > 0 for row in body["prefix"])
    rows = body["sparse_mlp"]
    assert {(r["shape"], r["skip"], r["tokens"], r["sets"]) for r in rows} == {
        (shape, skip, tokens, sets)
        for shape in ("smollm2", "relu-2048")
        for skip in (0.9, 0.97)
        for tokens in (1, 16, 256)
        for sets in ("shared", "per_token")
    }
    assert all(r["limit"] == 1 / (1 - r["skip"]) and r["speedup"] > 0 for r in rows)
    assert sum("meets_target" in r for r in rows) == 5  # 2 shapes × 2 levels shared, 1 per-token decode
    assert "skipped" in body["triton"] or body["triton"]["rows"]


def test_kernel_choice(capsys, monkeypatch):
    edit = '[{"kind": "head_mask", "layer": 1, "heads": [0, 2]}, {"kind": "topk", "layer": 2, "k": 32}]'
    argv = ["replay", "--model", "tiny-relu", "--edit", edit, "--tokens", "64", "--context", "32", "--json"]
    torch_body = run_json(capsys, [*argv, "--kernels", "torch"])
    triton_body = run_json(capsys, [*argv, "--kernels", "triton"])  # the interpreter, under pytest
    assert triton_body["kernels"] == "triton" and torch_body["kernels"] == "torch"
    assert abs(triton_body["kl"] - torch_body["kl"]) < 1e-4
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert main([*argv, "--kernels", "triton"]) == 2
    assert "TRITON_INTERPRET=1" in capsys.readouterr().err
