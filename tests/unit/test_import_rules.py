"""Who may import what, read from the source: nothing imports the CLI, nothing below imports the commands,
probes import no analysis, kernels nothing of the workbench, the store no model code, the replay core
nothing of essential sparsity but the pruning plan, and nothing but the widgets benchmark the widgets.

`workbench.cli` is the registry of commands and `main`: only the console-script entry point
(pyproject.toml) and the tests import it. The command modules under `workbench/commands/` adapt flags to
the cores; the cores, probes and kernels never import them (a notebook gets every behaviour from a core).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("workbench", "probes", "kernels")  # probes/ and kernels/ are linked into workbench/


def modules() -> dict[str, tuple[str, ast.Module]]:
    """Every Python module once, by its real path: (its package-relative dotted name, its syntax tree).

    A package's `__init__` is named `pkg.__init__`, so that relative imports resolve the same way for both.
    """
    out: dict[str, tuple[str, ast.Module]] = {}
    for top in PACKAGES:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.resolve().relative_to(ROOT.resolve())
            key = rel.as_posix()
            if key in out:
                continue
            parts = list(rel.with_suffix("").parts)
            if parts[0] != "workbench":
                parts.insert(0, "workbench")
            out[key] = (".".join(parts), ast.parse(path.read_text(encoding="utf-8"), key))
    return out


def imported(name: str, tree: ast.Module) -> list[tuple[int, str]]:
    """(line, module) for every import in the tree, relative imports resolved against `name`."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from . import x (level 1: this module's package), from .. (its parent)
                package = name.split(".")[: -node.level]
                base = ".".join(package + ([base] if base else []))
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_imports_are_read_absolute_relative_and_dynamic():
    tree = ast.parse(
        "import workbench.cli\nfrom . import flags\nfrom ..cli import main\n"
        "importlib.import_module('workbench.commands.replay')\n"
    )
    found = [target for _, target in imported("workbench.commands.replay", tree)]
    assert found == [
        "workbench.cli",
        "workbench.commands",
        "workbench.commands.flags",
        "workbench.cli",
        "workbench.cli.main",
        "workbench.commands.replay",
    ], found


def test_modules_are_found():
    names = {name for name, _ in modules().values()}
    assert {
        "workbench.cli",
        "workbench.commands.flags",
        "workbench.probes.base",
        "workbench.kernels.dispatch",
    } <= names


def test_nothing_imports_the_cli():
    offenders = [
        f"{path}:{line} imports {target}"
        for path, (name, tree) in modules().items()
        if name != "workbench.__main__"  # `python -m workbench`: the console script's twin
        for line, target in imported(name, tree)
        if within(target, "workbench.cli")
    ]
    assert not offenders, (
        f"only the console-script entry point and the tests import workbench.cli: {offenders}"
    )


def test_nothing_below_the_commands_imports_them():
    offenders = [
        f"{path}:{line} imports {target}"
        for path, (name, tree) in modules().items()
        if not within(name, "workbench.commands") and name != "workbench.cli"  # the registry imports them
        for line, target in imported(name, tree)
        if within(target, "workbench.commands")
    ]
    assert not offenders, f"cores, probes and kernels must not import the command modules: {offenders}"


def test_the_entry_point_is_the_cli():
    assert 'workbench = "workbench.cli:main"' in (ROOT / "pyproject.toml").read_text()


ANALYSES = (
    "workbench.sparsity",
    "workbench.essential",
    "workbench.neurons",
    "workbench.evaluate",
    "workbench.experts",
    "workbench.transcoders",
    "workbench.replay",
    "workbench.report",
)
MODEL_CODE = ("workbench.models", "transformers", "transformer_lens", "sae_lens")


def offenders(folder: str, banned: tuple[str, ...], allowed: tuple[str, ...] = ()) -> list[str]:
    """`path:line imports module` for every import under `folder` of a banned package."""
    return sorted(
        f"{path}:{line} imports {module}"
        for path, (name, tree) in modules().items()
        if path.startswith(folder + "/") and path not in allowed
        for line, module in imported(name, tree)
        if any(within(module, b) for b in banned)
    )


def test_probes_import_no_analysis():
    """Probes watch a model; analyses fold what they see. Capture must not depend on any analysis."""
    assert offenders("probes", ANALYSES + ("workbench.cli", "workbench.commands")) == []


def test_kernels_import_nothing_of_the_workbench_but_themselves():
    """Kernels are plain tensor code beside torch twins (the GPU check script drives replay on purpose)."""
    bad = [
        line
        for line in offenders("kernels", ("workbench",), allowed=("kernels/gpu_check.py",))
        if not line.split(" imports ")[1].startswith("workbench.kernels")
    ]
    assert bad == []


def test_the_store_imports_no_model_code():
    """A store is tensors and metadata on disk; reading one must not load model code."""
    assert offenders("workbench/store", MODEL_CODE) == []


def test_the_replay_core_imports_of_essential_sparsity_only_the_pruning_plan():
    """Replay prunes weights with the pruning plan (`workbench.essential.pruning`); the sweep, its result,
    Wanda's norms and the package's lazy names (`essential.run`, `.result`, `.wanda`) stay out of it."""
    allowed = "workbench.essential.pruning"
    bad = [
        line
        for line in offenders("workbench/replay", ("workbench.essential",))
        if not within(line.split(" imports ")[1], allowed)
    ]
    assert bad == [], f"the replay core may import only {allowed} of essential sparsity: {bad}"


def test_only_the_widgets_benchmark_imports_the_widgets():
    """The widgets are the top of the stack (ipywidgets, anywidget): cores, probes, kernels, results and
    commands never import them, so that a script or the CLI runs without a notebook front end. The one
    exception is `workbench/bench/widgets.py`, which drives the widgets' Python side to time them."""
    offenders = [
        f"{path}:{line} imports {target}"
        for path, (name, tree) in modules().items()
        if not within(name, "workbench.widgets") and name != "workbench.bench.widgets"
        for line, target in imported(name, tree)
        if within(target, "workbench.widgets")
    ]
    assert not offenders, f"only workbench/bench/widgets.py may import the widgets: {offenders}"


def test_only_the_scale_package_imports_ray():
    """Ray is an optional extra (`.[scale]`): only `workbench/scale/` imports it, and only inside the
    functions that run when workers are asked for (tests/unit/test_scale_store.py checks the imports)."""
    offenders = [
        f"{path}:{line} imports {target}"
        for path, (name, tree) in modules().items()
        if not within(name, "workbench.scale")
        for line, target in imported(name, tree)
        if within(target, "ray")
    ]
    assert not offenders, f"only workbench/scale/ may import ray: {offenders}"
    scale = [
        imp
        for path, (name, tree) in modules().items()
        if path.startswith("workbench/scale/")
        for imp in imported(name, tree)
        if within(imp[1], "ray")
    ]
    assert scale, "the check reads the scale package's imports"
