"""progress.json as the panel reads it: typed, tolerant of missing, half-written and odd files."""

from __future__ import annotations

import json

from workbench.lab.progress import MAX_CURVE_POINTS, clean_progress, progress_message, read_progress

KEYS = {"phase", "done", "total", "unit", "rate", "eta_s", "elapsed_s", "updated", "curve"}


def test_a_good_file_reads_as_written(tmp_path):
    data = {
        "phase": "train transcoder", "done": 8, "total": 100, "unit": "steps", "rate": 1.5, "eta_s": 61.3,
        "elapsed_s": 5.2, "updated": "2026-01-01T00:00:00+00:00",
        "curve": {"name": "loss", "x": "tokens", "points": [[512, 1.25], [1024, 1.0]]},
    }  # fmt: skip
    (tmp_path / "progress.json").write_text(json.dumps(data))
    assert read_progress(tmp_path / "progress.json") == data


def test_missing_half_written_and_non_object_files_read_as_none(tmp_path):
    assert read_progress(None) is None
    assert read_progress(tmp_path / "absent.json") is None
    (tmp_path / "half.json").write_text('{"phase": "capt')
    assert read_progress(tmp_path / "half.json") is None
    (tmp_path / "list.json").write_text("[1, 2]")
    assert read_progress(tmp_path / "list.json") is None


def test_wrong_types_read_as_null_and_bad_points_are_dropped():
    cleaned = clean_progress(
        {
            "phase": 3, "done": "12", "total": True, "unit": None, "rate": float("nan"),
            "eta_s": float("inf"), "elapsed_s": 2, "updated": 5, "extra": "dropped",
            "curve": {"name": "loss", "points": [[1, 2], [1, "x"], [1], "no", [3, None], [4, 5.5]]},
        }
    )  # fmt: skip
    assert set(cleaned) == KEYS
    assert cleaned["phase"] is None and cleaned["done"] is None and cleaned["total"] is None
    assert cleaned["rate"] is None and cleaned["eta_s"] is None and cleaned["elapsed_s"] == 2
    assert cleaned["curve"] == {"name": "loss", "x": "", "points": [[1, 2], [4, 5.5]]}
    assert clean_progress({"curve": "loss"})["curve"] is None


def test_a_huge_curve_keeps_its_latest_points():
    points = [[i, 1.0 / (i + 1)] for i in range(MAX_CURVE_POINTS + 500)]
    cleaned = clean_progress({"curve": {"name": "loss", "x": "tokens", "points": points}})
    assert cleaned["curve"]["points"] == points[-MAX_CURVE_POINTS:]


def test_the_message_always_has_every_key_and_the_status():
    empty = progress_message(None, "running")
    assert set(empty) == KEYS | {"status"} and empty["status"] == "running" and empty["done"] is None
    full = progress_message(clean_progress({"done": 3}), "complete")
    assert full["done"] == 3 and full["status"] == "complete"
