"""Run ids stay inside the runs root: traversal is refused without touching the disk, links out are
forbidden."""

from __future__ import annotations

import pytest

from workbench.lab.config import resolve_runs_root
from workbench.lab.paths import Forbidden, NotFound, check_id, inside_file, is_inside, run_folder, run_id


@pytest.mark.parametrize(
    "bad",
    ["", "/etc", "/", "..", "../x", "a/../../x", "a/..", "./a", "a/./b", "a//b", "a/", "a\\..\\b", "a\x00b"],
)
def test_ids_that_could_leave_the_root_are_not_found(bad):
    with pytest.raises(NotFound):
        check_id(bad)


def test_plain_ids_are_relative_segments(tmp_path):
    assert check_id("sweep/a").parts == ("sweep", "a")
    assert check_id("20260101-evaluate").parts == ("20260101-evaluate",)
    (tmp_path / "sweep" / "a").mkdir(parents=True)
    assert run_folder(tmp_path, "sweep/a") == tmp_path / "sweep" / "a"
    assert run_id(tmp_path, tmp_path / "sweep" / "a") == "sweep/a"


def test_missing_folders_and_files_are_not_found(tmp_path):
    with pytest.raises(NotFound):
        run_folder(tmp_path, "nothing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotFound):
        run_folder(tmp_path, "file")
    assert inside_file(tmp_path, tmp_path, "absent.json") is None


def test_a_folder_linked_from_outside_is_forbidden(tmp_path):
    root, outside = tmp_path / "runs", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "escape").symlink_to(outside, target_is_directory=True)
    (root / "inner").mkdir()
    (root / "alias").symlink_to(root / "inner", target_is_directory=True)
    with pytest.raises(Forbidden):
        run_folder(root, "escape")
    assert run_folder(root, "alias") == root / "alias"  # a link that stays inside is fine
    assert not is_inside(root, root / "escape") and is_inside(root, root / "alias")


def test_a_file_linked_from_outside_is_forbidden(tmp_path):
    root = tmp_path / "runs"
    (root / "run").mkdir(parents=True)
    secret = tmp_path / "secret.json"
    secret.write_text("{}")
    (root / "run" / "manifest.json").symlink_to(secret)
    (root / "run" / "results.json").write_text("{}")
    with pytest.raises(Forbidden):
        inside_file(root, root / "run", "manifest.json")
    assert inside_file(root, root / "run", "results.json") == root / "run" / "results.json"


def test_a_root_reached_through_a_link_still_confines(tmp_path):
    real = tmp_path / "real"
    (real / "run").mkdir(parents=True)
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    assert run_folder(tmp_path / "link", "run") == tmp_path / "link" / "run"
    (real / "out").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(Forbidden):
        run_folder(tmp_path / "link", "out")


def test_the_runs_root_is_the_setting_else_workbench_runs_else_root_dir_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("WORKBENCH_RUNS", raising=False)
    assert resolve_runs_root("", str(tmp_path)) == tmp_path / "runs"
    monkeypatch.setenv("WORKBENCH_RUNS", "elsewhere")
    assert resolve_runs_root("", str(tmp_path)) == tmp_path / "elsewhere"
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "abs"))
    assert resolve_runs_root("", "/unused") == tmp_path / "abs"
    assert resolve_runs_root("mine", str(tmp_path)) == tmp_path / "mine"
