"""Benchmarks have one home (`workbench/bench/`) and one timing helper (`workbench/bench/timing.py`).

Read from the source: no module outside `workbench/bench/` is a benchmark module (the command
`workbench/commands/bench.py` only adapts flags to them), no module of `workbench/bench/` but
`timing.py` reads a clock, and no module anywhere but `timing.py` takes the median of timings or times
a call by CUDA events. `kernels/gpu_check.py`, the standalone GPU script that runs from a bare checkout
without the workbench installed, keeps its own CUDA-graph timer. Also: the helper itself, on fake
functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from workbench.bench import BENCHMARKS
from workbench.bench.timing import median_seconds, stopwatch, time_calls

ROOT = Path(__file__).resolve().parents[2]
HOME = ROOT / "workbench" / "bench"
TIMING = HOME / "timing.py"
STANDALONE = {ROOT / "kernels" / "gpu_check.py"}
CLOCKS = {"perf_counter", "perf_counter_ns", "monotonic", "monotonic_ns", "process_time", "time_ns"}
TIMING_STATS = {"elapsed_time", "do_bench"}  # CUDA-event and Triton timers


def sources() -> list[Path]:
    """Every Python file of the workbench, its probes and its kernels, once, by its real path."""
    seen: dict[Path, None] = {}
    for top in ("workbench", "probes", "kernels"):
        for path in sorted((ROOT / top).rglob("*.py")):
            seen.setdefault(path.resolve(), None)
    return list(seen)


def names_used(tree: ast.AST) -> set[str]:
    """Every attribute and bare name the tree reads, and every name it imports."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            found.add(node.attr)
        elif isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, ast.ImportFrom):
            found.update(alias.name for alias in node.names)
            found.add(node.module or "")
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def reads_a_clock(tree: ast.AST) -> set[str]:
    used = names_used(tree)
    return (used & CLOCKS) | ({"time.time"} if "time" in used and _calls_time_time(tree) else set())


def _calls_time_time(tree: ast.AST) -> bool:
    return any(
        isinstance(n, ast.Attribute) and n.attr == "time" and getattr(n.value, "id", None) == "time"
        for n in ast.walk(tree)
    )


def median_of_timings(tree: ast.AST) -> set[str]:
    """Signs of a timing helper: the statistics module, CUDA-event or Triton timing."""
    used = names_used(tree)
    return (used & TIMING_STATS) | ({"statistics"} & used)


def test_benchmarks_have_one_home():
    home, commands = HOME.resolve(), (ROOT / "workbench" / "commands").resolve()
    outside = [
        str(p.relative_to(ROOT.resolve()))
        for p in sources()
        if "bench" in p.stem and home not in p.parents and p.parent != commands  # the command adapts flags
    ]
    assert not outside, f"benchmark modules belong in workbench/bench/: {outside}"
    assert set(BENCHMARKS.names()) == {"capture", "essential", "transcoder", "replay", "widgets", "scale"}


def test_only_the_timing_helper_reads_a_clock_in_the_benchmarks():
    offenders = {
        p.name: sorted(reads_a_clock(ast.parse(p.read_text(encoding="utf-8"))))
        for p in sorted(HOME.glob("*.py"))
        if p != TIMING
    }
    offenders = {name: clocks for name, clocks in offenders.items() if clocks}
    assert not offenders, f"benchmarks time through workbench/bench/timing.py only: {offenders}"


def test_there_is_one_timing_helper():
    helpers = sorted(
        str(p.relative_to(ROOT.resolve()))
        for p in sources()
        if p not in STANDALONE and median_of_timings(ast.parse(p.read_text(encoding="utf-8")))
    )
    assert helpers == ["workbench/bench/timing.py"], helpers


def test_the_checks_can_fail():
    hand_rolled = ast.parse(
        "import statistics, time\n"
        "def median_ms(fn, n):\n"
        "    times = []\n"
        "    for _ in range(n):\n"
        "        start = time.perf_counter(); fn(); times.append(time.perf_counter() - start)\n"
        "    return statistics.median(times)\n"
    )
    assert reads_a_clock(hand_rolled) == {"perf_counter"}
    assert median_of_timings(hand_rolled) == {"statistics"}
    assert reads_a_clock(ast.parse("import time\nt = time.time()\n")) == {"time.time"}
    assert median_of_timings(ast.parse("s.record(); fn(); e.record(); ms = s.elapsed_time(e)\n"))


def test_time_calls_warms_up_interleaves_and_keeps_every_call():
    order: list[str] = []
    fns = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    timings = time_calls(fns, repeats=3, warmup=2)
    assert order == ["a", "a", "b", "b"] + ["a", "b"] * 3
    assert [len(t.seconds) for t in timings.values()] == [3, 3]
    assert all(t.best <= t.median for t in timings.values())
    with pytest.raises(ValueError):
        time_calls(fns, repeats=0)


def test_time_calls_measures_memory_and_the_stopwatch_a_block():
    timing = time_calls({"alloc": lambda: bytearray(64 * 2**20)}, repeats=2, warmup=0, memory=True)["alloc"]
    assert len(timing.peak_rss_mb) == 2 and max(timing.peak_rss_mb) >= 0
    assert median_seconds(lambda: None, 3) >= 0
    with stopwatch() as watch:
        sum(range(10_000))
    assert watch.seconds > 0
