"""`workbench sparsity` end to end on the demo model, and its report section."""

from __future__ import annotations

import json

from workbench.cli import main


def test_sparsity_json_and_report_section(tmp_path, capsys):
    out = tmp_path / "sparsity"
    args = ["--model", "tiny-relu", "--tokens", "2048", "--inputs", "heldout,random", "--out", str(out)]
    assert main(["sparsity", *args, "--json"]) == 0
    body = json.loads(capsys.readouterr().out, parse_constant=float)
    assert body["definition"] == "exact_zero" and body["tokens"] == 2048
    assert set(body["by_input"]) == {"heldout", "random"} and set(body["by_domain"]) <= {"code", "prose"}
    assert len(body["layers"]) == 4
    for row in body["layers"]:
        assert {"layer", "density_mean", "density_median", "dead_neurons", "dense_neurons"} <= set(row)
        assert 0 < row["density_mean"] < 1
    assert body["density_mean"] <= 0.25  # the demo model is lazy (its card: 13 %)
    report = tmp_path / "report"
    assert (
        main(
            ["report", "--model", "tiny-relu", "--tokens", "512", "--out", str(report), "--include", str(out)]
        )
        == 0
    )
    html = (report / "report.html").read_text()
    assert all(
        f'data-chart="{name}"' in html
        for name in ("density_by_layer", "density_distribution", "firing_frequency")
    )
