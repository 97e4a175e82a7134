"""The Lab API on a real Jupyter server (pytest-jupyter): listing, reading, charts, reports, progress,
compare, the command whitelist and jobs, and what it refuses (no token, no XSRF, paths outside the runs
root, requests outside the whitelist)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest

from workbench.lab.report import CONTENT_SECURITY_POLICY
from workbench.results import GenericResult
from workbench.runs import RunFolder

API = ("workbench", "api")


def generic(kind: str, **fields) -> GenericResult:
    """A result of a kind no package reads (read back as a generic result): no model needed."""
    provenance = {"model": {"name": "made-up"}, "data": {}, "definition": "made up for a test"}
    return GenericResult.from_dict({"kind": kind, **fields, "provenance": provenance})


def complete_run(folder: Path, kind: str = "lab_a", **fields) -> Path:
    run = RunFolder.create(folder, "test", f"workbench {kind} --model made-up")
    run.save([generic(kind, **fields)])
    return folder


async def answer(jp_fetch, *parts, method="GET", body=None, headers=None, params=None):
    """(status code, parsed JSON or text) of a request that may fail."""
    response = await jp_fetch(
        *API,
        *parts,
        method=method,
        body=body,
        headers=headers,
        params=params,
        raise_error=False,
        allow_nonstandard_methods=True,
    )
    text = response.body.decode() if response.body else ""
    try:
        return response.code, json.loads(text)
    except ValueError:
        return response.code, text


@pytest.fixture
def fetch_raw(http_server_client, jp_base_url, jp_auth_header):
    """A GET of `workbench/api/<path>` sent exactly as written (jp_fetch encodes '%' again and cannot
    repeat a query parameter): (status code, parsed JSON or the raw body)."""

    async def fetch(path: str):
        response = await http_server_client.fetch(
            jp_base_url + "workbench/api/" + path, headers=jp_auth_header, raise_error=False
        )
        try:
            return response.code, json.loads(response.body)
        except ValueError:
            return response.code, response.body

    return fetch


async def get(jp_fetch, *parts, **params):
    code, body = await answer(jp_fetch, *parts, params=params)
    assert code == 200, (code, body)
    return body


@pytest.fixture
def live_run(runs_root):
    """A run that is running (this process, fresh heartbeat) with a progress.json; completed at the end."""
    run = RunFolder.create(runs_root / "live", "live", "workbench capture --model tiny-moe --tokens 10")
    write_progress(run.path, done=1)
    yield run
    if not run._saved:
        run.save([generic("lab_a")])


def write_progress(folder: Path, done: int) -> None:
    progress = {
        "phase": "capture tiny-moe", "done": done, "total": 10, "unit": "tokens", "rate": 2.0,
        "eta_s": 4.5, "elapsed_s": 0.5, "updated": "2026-01-01T00:00:00+00:00",
        "curve": {"name": "loss", "x": "tokens", "points": [[1, 2.5], [2, 2.0]]},
    }  # fmt: skip
    tmp = folder / ".progress.json.tmp"
    tmp.write_text(json.dumps(progress))
    tmp.replace(folder / "progress.json")


def set_created(folder: Path, created: str) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "created": created}))


@pytest.fixture
def odd_folders(runs_root, tmp_path, live_run):
    """Besides the two real runs: a nested run, a running one, damaged ones, and things that are no runs."""
    complete_run(runs_root / "sweep" / "a", "lab_a", score=0.5)
    for name, year in (("sweep/a", 2000), ("sparsity-0", 2001), ("sparsity-1", 2002)):
        set_created(runs_root / name, f"{year}-01-01T00:00:00+00:00")
    (runs_root / "damaged").mkdir()
    (runs_root / "damaged" / "manifest.json").write_text('{"format": "workbench-run/1", "status": "compl')
    (runs_root / "half").mkdir()
    (runs_root / "half" / "results.json").write_text('{"results": []}')
    (runs_root / "weird").mkdir()
    (runs_root / "weird" / "manifest.json").write_text("[1, 2]")
    (runs_root / "notes").mkdir()
    (runs_root / "notes" / "todo.txt").write_text("not a run")
    complete_run(runs_root / ".jobs" / "hidden")
    outside = complete_run(tmp_path / "outside" / "run", "lab_a")
    (runs_root / "escape").symlink_to(outside, target_is_directory=True)
    (runs_root / "peek").mkdir()
    (runs_root / "peek" / "manifest.json").symlink_to(outside / "manifest.json")
    return runs_root


# --- listing ---------------------------------------------------------------------------------------------
async def test_listing_shows_every_run_and_damaged_ones_with_an_error(jp_fetch, odd_folders):
    listing = await get(jp_fetch, "runs")
    assert listing["root"] == str(odd_folders)
    rows = {row["id"]: row for row in listing["runs"]}
    assert set(rows) == {"sparsity-0", "sparsity-1", "sweep/a", "live", "damaged", "half", "weird", "peek"}
    real = rows["sparsity-0"]
    assert real["status"] == "complete" and real["kinds"] == ["sparsity"] and real["model"] == "tiny-relu"
    assert set(real) == {"id", "kinds", "model", "command", "status", "created", "finished", "headline",
                         "progress", "error"}  # fmt: skip
    assert real["headline"]["definition"] == "exact_zero" and 0 < real["headline"]["density_mean"] < 1
    assert real["error"] is None and real["created"] and real["finished"]
    assert rows["sweep/a"]["headline"] == {"score": 0.5}
    assert rows["live"]["status"] == "running" and rows["live"]["model"] == "tiny-moe"
    for damaged in ("damaged", "half", "weird", "peek"):
        assert rows[damaged]["status"] == "unreadable" and rows[damaged]["error"], rows[damaged]
    assert "outside the runs root" in rows["peek"]["error"]
    assert "missing" in rows["half"]["error"]


async def test_listing_filters_and_sorts(jp_fetch, odd_folders):
    async def ids(**params):
        return [row["id"] for row in (await get(jp_fetch, "runs", **params))["runs"]]

    assert sorted(await ids(kind="sparsity")) == ["sparsity-0", "sparsity-1"]
    assert await ids(status="running") == ["live"]
    assert sorted(await ids(status="unreadable")) == ["damaged", "half", "peek", "weird"]
    assert await ids(q="SEED 1") == ["sparsity-1"]
    assert await ids(q="tiny-moe") == ["live"]
    assert await ids(kind="lab_a", status="complete") == ["sweep/a"]
    unreadable = ["damaged", "half", "peek", "weird"]  # no created date: last either way, by id
    assert await ids() == ["live", "sparsity-1", "sparsity-0", "sweep/a", *unreadable]
    assert await ids(sort="created") == ["sweep/a", "sparsity-0", "sparsity-1", "live", *unreadable]
    by_model = await ids(sort="model")
    assert by_model[:2] == ["sweep/a", "live"]  # made-up < tiny-moe < tiny-relu; no model last
    by_status = await ids(sort="-status")
    assert by_status[:4] == sorted(["damaged", "half", "peek", "weird"])  # "unreadable" sorts last, reversed
    code, body = await answer(jp_fetch, "runs", params={"sort": "size"})
    assert code == 400 and "unknown sort" in body["message"]


async def test_an_empty_or_missing_root_lists_nothing(jp_fetch, runs_root):
    shutil.rmtree(runs_root)
    assert (await get(jp_fetch, "runs"))["runs"] == []


# --- one run -----------------------------------------------------------------------------------------------
async def test_a_run_reads_with_its_manifest_and_results(jp_fetch, runs_root):
    detail = await get(jp_fetch, "runs", "sparsity-0")
    assert detail["row"]["id"] == "sparsity-0" and detail["row"]["status"] == "complete"
    assert detail["manifest"]["command"] == "workbench sparsity --seed 0"
    saved = json.loads((runs_root / "sparsity-0" / "results.json").read_text())["results"]
    assert detail["results"] == saved


async def test_charts_are_svg_drawn_on_the_server(jp_fetch):
    charts = (await get(jp_fetch, "runs", "sparsity-0", "charts"))["charts"]
    assert {c["name"] for c in charts} == {"density_by_layer", "density_distribution", "firing_frequency"}
    for chart in charts:
        assert chart["kind"] == "sparsity" and chart["title"]
        assert chart["svg"].startswith("<svg") and "</svg>" in chart["svg"]


async def test_the_report_is_static_html_under_a_strict_policy(jp_fetch, live_run):
    response = await jp_fetch(*API, "runs", "sparsity-0", "report")
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    page = response.body.decode()
    assert "<svg" in page and "<script" not in page and "sparsity-0" in page
    code, body = await answer(jp_fetch, "runs", "live", "report")
    assert code == 409 and "running" in body["message"]
    code, body = await answer(jp_fetch, "runs", "live", "charts")
    assert code == 409


# --- progress ----------------------------------------------------------------------------------------------
async def test_progress_of_a_running_run(jp_fetch, live_run):
    row = next(r for r in (await get(jp_fetch, "runs"))["runs"] if r["id"] == "live")
    assert row["progress"]["done"] == 1 and row["progress"]["unit"] == "tokens"
    progress = await get(jp_fetch, "runs", "live", "progress")
    assert progress["status"] == "running" and progress["done"] == 1 and progress["total"] == 10
    assert progress["curve"]["points"] == [[1, 2.5], [2, 2.0]]
    finished = await get(jp_fetch, "runs", "sparsity-0", "progress")
    assert finished["status"] == "complete"


async def test_progress_stream_sends_changes_and_ends_with_the_run(jp_fetch, live_run):
    def advance():
        time.sleep(1.0)
        write_progress(live_run.path, done=7)
        time.sleep(1.0)
        live_run.save([generic("lab_a")])

    worker = threading.Thread(target=advance)
    worker.start()
    response = await jp_fetch(*API, "runs", "live", "progress", params={"stream": "1"}, request_timeout=60)
    worker.join()
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = [
        json.loads(line[6:]) for line in response.body.decode().splitlines() if line.startswith("data: ")
    ]
    assert [e["status"] for e in events][0] == "running" and events[-1]["status"] == "complete"
    assert [e["done"] for e in events if e["status"] == "running"][:1] == [1]
    assert 7 in [e["done"] for e in events]
    assert all(a != b for a, b in zip(events, events[1:], strict=False))  # only changes are sent


# --- compare -----------------------------------------------------------------------------------------------
async def test_compare_overlays_same_kind_runs(fetch_raw, odd_folders):
    code, compared = await fetch_raw("compare?id=sparsity-0&id=sparsity-1")
    assert code == 200, compared
    assert compared["kind"] == "sparsity"
    assert [row["id"] for row in compared["runs"]] == ["sparsity-0", "sparsity-1"]
    assert [row["run"] for row in compared["table"]] == ["sparsity-0", "sparsity-1"]
    assert all("density_mean" in row for row in compared["table"])
    assert {c["name"] for c in compared["charts"]} == {
        "density_by_layer",
        "density_distribution",
        "firing_frequency",
    }
    for chart in compared["charts"]:
        assert (
            chart["svg"].startswith("<svg") and "sparsity-0" in chart["svg"] and "sparsity-1" in chart["svg"]
        )
        assert re.search(r">run</text>", chart["svg"]), chart["name"]  # one chart, with a legend of runs


@pytest.mark.parametrize(
    ("ids", "code", "words"),
    [
        (["sparsity-0", "sweep/a"], 400, "no result kind in common"),
        (["sparsity-0"], 400, "two or more"),
        (["sparsity-0", "nowhere"], 404, "no run folder"),
        (["sparsity-0", "live"], 409, "running"),
        (["sparsity-0", "escape"], 403, "outside"),
    ],
)
async def test_compare_refuses(fetch_raw, odd_folders, ids, code, words):
    status, body = await fetch_raw("compare?" + "&".join(f"id={i}" for i in ids))
    assert status == code and words in body["message"], body


# --- paths outside the runs root ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path",
    [
        "runs/..%2F..%2F..%2Fetc%2Fpasswd",
        "runs/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "runs/../../../../etc/passwd",
        "runs/%2Fetc%2Fpasswd",
        "runs/%2Fetc",
        "runs/sparsity-0%2F..%2F..%2Foutside%2Frun",
        "runs/sparsity-0/../../outside/run/charts",
        "runs/..%5C..%5Coutside",
        "runs/%00/report",
        "runs/..%2Foutside%2Frun/report",
        "runs/..%2Foutside%2Frun/progress",
        "compare?id=..%2Foutside%2Frun&id=sparsity-0",
    ],
)
async def test_traversal_is_refused(fetch_raw, odd_folders, path):
    code, body = await fetch_raw(path)
    assert code == 404, (code, body)
    assert "root:" not in str(body) and "made up" not in str(body)


@pytest.mark.parametrize("tail", [(), ("charts",), ("report",), ("progress",)])
async def test_a_link_out_of_the_root_is_forbidden(jp_fetch, odd_folders, tail):
    for run in ("escape", "peek"):
        code, body = await answer(jp_fetch, "runs", run, *tail)
        assert code == 403 and "outside the runs root" in body["message"], (run, code, body)


# --- authentication --------------------------------------------------------------------------------------
ENDPOINTS = [
    ("GET", ("runs",), None),
    ("GET", ("runs", "sparsity-0"), None),
    ("GET", ("runs", "sparsity-0", "charts"), None),
    ("GET", ("runs", "sparsity-0", "report"), None),
    ("GET", ("runs", "sparsity-0", "progress"), None),
    ("GET", ("compare",), None),
    ("GET", ("commands",), None),
    ("GET", ("jobs",), None),
    ("POST", ("jobs",), json.dumps({"command": "evaluate", "args": {"model": "tiny-relu"}})),
    ("DELETE", ("jobs", "0123456789ab"), None),
]


@pytest.mark.parametrize(("method", "parts", "body"), ENDPOINTS)
@pytest.mark.parametrize("authorization", ["", "token wrong-token"])
async def test_requests_without_the_token_are_refused(
    jp_fetch, runs_root, method, parts, body, authorization
):
    code, _ = await answer(
        jp_fetch, *parts, method=method, body=body, headers={"Authorization": authorization}
    )
    assert code == 403
    assert not (runs_root / ".jobs").exists()


async def test_cookie_authenticated_changes_need_the_xsrf_token(jp_fetch, runs_root):
    response = await jp_fetch(*API, "runs")  # with the token: the server sets its login cookie
    login = "; ".join(
        c.split(";")[0] for c in response.headers.get_list("Set-Cookie") if c.startswith("username")
    )
    assert login
    cookie_only = {"Authorization": "", "Cookie": login}
    code, listing = await answer(jp_fetch, "runs", headers=cookie_only)
    assert code == 200 and listing["runs"]
    body = json.dumps({"command": "evaluate", "args": {"model": "tiny-relu"}})
    code, _ = await answer(jp_fetch, "jobs", method="POST", body=body, headers=cookie_only)
    assert code == 403
    code, _ = await answer(jp_fetch, "jobs", "0123456789ab", method="DELETE", headers=cookie_only)
    assert code == 403
    # the same request with a matching XSRF cookie and header gets past the check (refused for its body)
    xsrf = "0123456789abcdef0123456789abcdef"
    with_xsrf = {"Authorization": "", "Cookie": f"{login}; _xsrf={xsrf}", "X-XSRFToken": xsrf}
    code, answered = await answer(
        jp_fetch, "jobs", method="POST", body='{"command": "nope"}', headers=with_xsrf
    )
    assert code == 400 and "unknown command" in answered["message"]
    assert not (runs_root / ".jobs").exists()


# --- commands and jobs ------------------------------------------------------------------------------------
async def test_commands_are_the_whitelist(jp_fetch):
    commands = {c["name"]: c for c in (await get(jp_fetch, "commands"))["commands"]}
    assert {"evaluate", "sparsity", "essential", "experts", "moefy", "transcoder train", "capture"} <= set(
        commands
    )
    model = next(f for f in commands["evaluate"]["fields"] if f["name"] == "model")
    assert model["type"] == "choice" and {"tiny-relu", "tiny-moe", "smollm2-135m"} <= set(model["choices"])
    tokens = next(f for f in commands["sparsity"]["fields"] if f["name"] == "tokens")
    assert tokens["type"] == "int" and tokens["min"] == 1 and isinstance(tokens["max"], int)
    for command in commands.values():
        for field in command["fields"]:
            assert {"name", "type", "default", "help"} <= set(field) and field["type"] in (
                "choice", "int", "float", "bool", "text",
            )  # fmt: skip


async def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def test_a_whitelisted_job_runs_to_a_complete_run_folder(jp_fetch, runs_root):
    body = {"command": "evaluate", "args": {"model": "tiny-relu", "tokens": 128, "context": 64, "seed": 3}}
    code, started = await answer(jp_fetch, "jobs", method="POST", body=json.dumps(body))
    assert code == 201, started
    job = started["job"]
    assert job["argv"][:4] == [sys.executable, "-m", "workbench", "evaluate"]
    assert job["argv"][-2:] == ["--out", str(runs_root / job["run"])]
    assert {"--model=tiny-relu", "--tokens=128", "--context=64", "--seed=3"} <= set(job["argv"])
    assert job["status"] == "running" and job["returncode"] is None and job["pid"] > 0

    async def finished():
        now = (await get(jp_fetch, "jobs", job["id"]))["job"]
        return now if now["status"] != "running" else None

    done = await wait_for(finished, 240, "the evaluate job")
    assert done["status"] == "complete" and done["returncode"] == 0, done
    assert [j["id"] for j in (await get(jp_fetch, "jobs"))["jobs"]] == [job["id"]]
    row = (await get(jp_fetch, "runs", job["run"]))["row"]
    assert row["status"] == "complete" and row["kinds"][-1] == "evaluation" and row["model"] == "tiny-relu"
    assert row["headline"]["tokens"] > 0
    assert (runs_root / ".jobs" / f"{job['id']}.log").stat().st_size > 0


async def test_a_job_is_cancelled_and_its_run_reads_interrupted(jp_fetch, runs_root):
    args = {"model": "tiny-relu", "tokens": 1_000_000_000, "batch_tokens": 64, "context": 64, "width": 64}
    code, started = await answer(
        jp_fetch, "jobs", method="POST", body=json.dumps({"command": "transcoder train", "args": args})
    )
    assert code == 201, started
    job = started["job"]
    assert job["argv"][3:5] == ["transcoder", "train"]
    manifest = runs_root / job["run"] / "manifest.json"

    async def begun():
        return manifest.is_file() and json.loads(manifest.read_text()).get("status") == "running"

    await wait_for(begun, 240, "the training run to begin")
    code, cancelling = await answer(jp_fetch, "jobs", job["id"], method="DELETE")
    assert code == 202 and cancelling["job"]["id"] == job["id"]

    async def stopped():
        now = (await get(jp_fetch, "jobs", job["id"]))["job"]
        return now if now["status"] != "running" else None

    done = await wait_for(stopped, 60, "the cancelled job to stop")
    assert done["status"] == "cancelled" and done["returncode"] != 0, done
    assert json.loads(manifest.read_text())["status"] == "interrupted"
    row = (await get(jp_fetch, "runs", job["run"]))["row"]
    assert row["status"] == "interrupted"
    code, again = await answer(jp_fetch, "jobs", job["id"], method="DELETE")
    assert code == 202 and again["job"]["status"] == "cancelled"  # cancelling a stopped job does nothing
    code, _ = await answer(jp_fetch, "jobs", "0123456789ab", method="DELETE")
    assert code == 404


REFUSED = [
    ({"command": "rm", "args": {}}, "unknown command"),
    ({"command": "evaluate; rm -rf /", "args": {}}, "unknown command"),
    ({"command": "replay", "args": {}}, "unknown command"),
    ({"command": ["evaluate"], "args": {}}, "unknown command"),
    ({"command": "evaluate", "args": {"model": "tiny-relu; rm -rf /"}}, "model must be one of"),
    ({"command": "evaluate", "args": {"model": "../../etc"}}, "model must be one of"),
    ({"command": "evaluate", "args": {"tokens": -5}}, "tokens must be between"),
    ({"command": "evaluate", "args": {"tokens": "100"}}, "tokens must be an integer"),
    ({"command": "evaluate", "args": {"tokens": 1.5}}, "tokens must be an integer"),
    ({"command": "evaluate", "args": {"tokens": True}}, "tokens must be an integer"),
    ({"command": "evaluate", "args": {"out": "/tmp/elsewhere"}}, "has no field 'out'"),
    ({"command": "evaluate", "args": {"text": ["/etc/passwd"]}}, "has no field 'text'"),
    ({"command": "evaluate", "args": {"model": 5}}, "model must be one of"),
    ({"command": "evaluate", "args": {}, "shell": True}, "nothing else"),
    ({"command": "evaluate", "args": ["--out", "/tmp"]}, "args must be a JSON object"),
    ({"command": "capture", "args": {"hooks": "blocks.0.hook_mlp_out --out=/etc"}}, "not of the form"),
    ({"command": "capture", "args": {"hooks": "$(touch /tmp/pwned)"}}, "not of the form"),
    ({"command": "capture", "args": {}}, "needs at least one of"),
    ({"command": "sparsity", "args": {"definition": "exact_zero\n--out=/x"}}, "not of the form"),
    ({"command": "essential", "args": {"levels": "0.1,`id`"}}, "not of the form"),
    ({"command": "experts", "args": {"baseline": "yes"}}, "true or false"),
    ({"command": "moefy", "args": {"experts": None}}, "experts is required"),
    ([1, 2], "the body must be"),
]


@pytest.mark.parametrize(("body", "words"), REFUSED)
async def test_requests_outside_the_whitelist_are_refused(jp_fetch, runs_root, body, words):
    before = sorted(p.name for p in runs_root.iterdir())
    code, answered = await answer(jp_fetch, "jobs", method="POST", body=json.dumps(body))
    assert code == 400 and words in answered["message"], answered
    assert (await get(jp_fetch, "jobs"))["jobs"] == []
    assert sorted(p.name for p in runs_root.iterdir()) == before


async def test_a_body_that_is_not_json_is_refused(jp_fetch, runs_root):
    code, _ = await answer(jp_fetch, "jobs", method="POST", body="evaluate --model tiny-relu")
    assert code == 400
    assert (await get(jp_fetch, "jobs"))["jobs"] == []


async def test_a_nan_in_a_hand_edited_results_file_reads_as_null(jp_fetch, runs_root):
    folder = complete_run(runs_root / "edited", "lab_a", score=0.5)
    text = (folder / "results.json").read_text().replace('"score": 0.5', '"score": NaN')
    (folder / "results.json").write_text(text)

    def refuse(constant):
        raise AssertionError(f"not JSON: {constant}")

    response = await jp_fetch(*API, "runs", "edited")
    detail = json.loads(response.body, parse_constant=refuse)
    assert detail["results"][0]["score"] is None and detail["row"]["status"] == "complete"
