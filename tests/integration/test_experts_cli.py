"""`workbench experts` and `workbench moefy` end to end on the demo models, with their report sections."""

from __future__ import annotations

import json

from workbench.cli import main


def test_experts_json_masking_and_report_section(tmp_path, capsys):
    out = tmp_path / "experts"
    args = ["--model", "tiny-moe", "--tokens", "2048", "--mask", "drop", "--mask-layers", "0", "--baseline"]
    assert main(["experts", *args, "--out", str(out), "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["model"] == "tiny-moe" and body["tokens"] == 2048
    assert [x["layer"] for x in body["layers"]] == [0, 1, 2, 3]
    for x in body["layers"]:
        assert {"layer", "load", "load_cv", "router_entropy_mean", "nmi", "adjacent_nmi"} <= set(x)
        assert abs(sum(x["load"]) - 2.0) < 1e-9  # top-2: the loads sum to k
        assert set(x["nmi"]) == {"domain", "token_class", "position", "token"}
        assert all(0 <= v <= 1 for v in x["nmi"].values())
    assert body["layers"][-1]["adjacent_nmi"] is None and body["layers"][0]["adjacent_nmi"] > 0
    assert len(body["baseline"]["layers"]) == 4
    rows = body["masking"]["rows"]
    assert body["masking"]["mode"] == "drop" and {r["expert"] for r in rows} == set(range(8))
    assert {r["domain"] for r in rows} == {"all", "code", "prose"}
    assert max(r["delta"] for r in rows) > 0.01  # masking a layer-0 expert costs something
    report = tmp_path / "report"
    assert (
        main(
            ["report", "--model", "tiny-relu", "--tokens", "256", "--out", str(report), "--include", str(out)]
        )
        == 0
    )
    html = (report / "report.html").read_text()
    assert all(f'data-chart="{name}"' in html for name in ("load", "nmi", "spec_domain", "delta"))


def test_report_of_a_moe_model_has_its_routing_section(tmp_path):
    report = tmp_path / "report"
    assert main(["report", "--model", "tiny-moe", "--tokens", "512", "--out", str(report)]) == 0
    html = (report / "report.html").read_text()
    assert "Expert routing and specialization" in html and 'data-chart="spec_domain"' in html


def test_moefy_json_and_errors(tmp_path, capsys):
    out = tmp_path / "moefy"
    args = ["--model", "tiny-relu", "--experts", "8", "--tokens", "1024", "--train-tokens", "1024"]
    assert main(["moefy", *args, "--out", str(out), "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["experts"] == 8 and body["method"] == "kmeans" and len(body["layers"]) == 4
    for x in body["layers"]:
        mass, routed = x["captured_mass"], x["captured_mass_router"]
        assert list(mass) == [str(k) for k in range(1, 9)]
        assert abs(mass["8"] - 1) < 1e-5 and abs(routed["8"] - 1) < 1e-5
        assert 2 / 8 < mass["2"] < 1 and routed["2"] <= mass["2"] + 1e-9  # the oracle is the best top-k
    assert main(["moefy", "--model", "tiny-moe", "--experts", "4", "--tokens", "256"]) == 2
    assert "mixture-of-experts" in capsys.readouterr().err
    assert main(["experts", "--model", "tiny-relu", "--tokens", "256"]) == 2
    assert "dense model" in capsys.readouterr().err
    assert main(["moefy", "--model", "tiny-relu", "--experts", "8", "--k", "9", "--tokens", "256"]) == 2
    assert "--k must be" in capsys.readouterr().err
