"""constraints.txt pins every distribution the project installs, so upstream releases cannot drift in."""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def pinned() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin (name==version)"
            pins[canonicalize_name(name)] = version
    return pins


def dependency_closure(root: str, extras: tuple[str, ...]) -> set[str]:
    """Names of every installed distribution that `root[extras]` pulls in, transitively."""
    seen: set[str] = set()
    todo = [(root, extras)]
    while todo:
        name, wanted = todo.pop()
        for raw in distribution(name).requires or []:
            req = Requirement(raw)
            dep = canonicalize_name(req.name)
            envs = [dict(default_environment(), extra=e) for e in ("", *wanted)]
            if req.marker and not any(req.marker.evaluate(env) for env in envs):
                continue
            try:
                distribution(dep)
            except PackageNotFoundError:
                continue  # an optional dependency nobody asked for
            key = dep + "[" + ",".join(sorted(req.extras)) + "]"
            if key not in seen:
                seen.add(key)
                todo.append((dep, tuple(req.extras)))
    return {re.sub(r"\[.*", "", key) for key in seen}


def test_every_installed_dependency_is_pinned():
    pins = pinned()
    missing = sorted(dependency_closure("interp-workbench", ("test", "bench", "scale")) - set(pins))
    assert not missing, f"add to constraints.txt (see its header): {missing}"


def test_readme_commands_install_with_the_constraints():
    readme = (ROOT / "README.md").read_text()
    installs = [line for line in readme.splitlines() if "pip install" in line and "-e ." in line]
    assert installs and all("-c constraints.txt" in line for line in installs), installs
