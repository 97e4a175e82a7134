"""The JupyterLab extension's build step; everything else about the package is in pyproject.toml.

`build_lab` runs first in every build (wheel, editable, `pip install .`): it compiles app/ (TypeScript,
bundled with `jupyter-builder build`) into workbench/lab/labextension/ unless that bundle was built from
the same sources (a digest of them is kept next to it), then installs the bundle as data files in
share/jupyter/labextensions/interp-workbench-lab/ (JupyterLab loads it from there, editable installs
included) together with the server extension's switch in etc/jupyter/jupyter_server_config.d/. Node.js
20 or newer must be on PATH; jlpm comes with the build requirement jupyter_builder.
WORKBENCH_SKIP_LAB_BUILD=1 installs without building (no Lab panels unless the bundle was built before).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from setuptools import Command, Distribution, setup
from setuptools.command.build import build

ROOT = Path(__file__).resolve().parent
APP = ROOT / "app"
OUTPUT = ROOT / "workbench" / "lab" / "labextension"
SHARE = "share/jupyter/labextensions/interp-workbench-lab"
SERVER_CONFIG = "jupyter-config/jupyter_server_config.d"
SOURCES = ("src", "style", "package.json", "yarn.lock", "tsconfig.json", ".yarnrc.yml")
STAMP = OUTPUT / ".sources.sha256"  # the digest of the sources the bundle was built from


def source_digest() -> str:
    """A digest of app/'s sources (names and contents): the bundle is rebuilt when it changes."""
    digest = hashlib.sha256()
    for name in SOURCES:
        path = APP / name
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if file.is_file():
                digest.update(file.relative_to(APP).as_posix().encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


def up_to_date(digest: str) -> bool:
    return (OUTPUT / "package.json").is_file() and STAMP.is_file() and STAMP.read_text().strip() == digest


def tool(name: str, hint: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"error: building the JupyterLab extension (app/) needs `{name}` on PATH: {hint}")
    return found


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


class BuildLab(Command):
    """Build app/ into workbench/lab/labextension and list it (and the server config) as data files."""

    description = "build the JupyterLab extension in app/ (jlpm install, jlpm build)"
    user_options: list = []

    def initialize_options(self) -> None:
        pass

    def finalize_options(self) -> None:
        pass

    def run(self) -> None:
        digest = source_digest()
        if os.environ.get("WORKBENCH_SKIP_LAB_BUILD") == "1":
            print("build_lab: WORKBENCH_SKIP_LAB_BUILD=1, the Lab extension is not built")
        elif up_to_date(digest):
            print(f"build_lab: {relative(OUTPUT)} was built from these sources, not rebuilt")
        else:
            tool("node", "install Node.js 20 or newer (or WORKBENCH_SKIP_LAB_BUILD=1: no Lab panels)")
            jlpm = tool("jlpm", "it comes with jupyter_builder (pip install jupyter_builder)")
            # A build from stale output would mix old and new chunks: start from nothing.
            shutil.rmtree(OUTPUT, ignore_errors=True)
            (APP / "tsconfig.tsbuildinfo").unlink(missing_ok=True)
            subprocess.run([jlpm, "install", "--immutable"], cwd=APP, check=True)
            subprocess.run([jlpm, "build"], cwd=APP, check=True)
            STAMP.write_text(digest + "\n")
        self.distribution.data_files.extend(self.data_files())

    @staticmethod
    def data_files() -> list[tuple[str, list[str]]]:
        """(install folder, files) pairs: the bundle, its install.json and the server extension's switch."""
        pairs = []
        if (OUTPUT / "package.json").is_file():
            built = [p for p in OUTPUT.rglob("*") if p.is_file() and not p.name.startswith(".")]
            for folder in sorted({p.parent for p in built}):
                files = sorted(relative(p) for p in built if p.parent == folder)
                inside = folder.relative_to(OUTPUT).as_posix()
                pairs.append((SHARE if inside == "." else f"{SHARE}/{inside}", files))
            pairs.append((SHARE, [relative(APP / "install.json")]))
        configs = sorted(relative(p) for p in (ROOT / SERVER_CONFIG).glob("*.json"))
        if configs:
            pairs.append(("etc/jupyter/jupyter_server_config.d", configs))
        return pairs


class LabDistribution(Distribution):
    """setuptools' editable build installs data files only when the distribution `has_data()`, a name
    distutils spells `has_data_files()` (setuptools issue 3399): without this alias `pip install -e .`
    would leave out the Lab extension and the server switch."""

    def has_data(self) -> bool:
        return self.has_data_files()


class Build(build):
    """`build`, with the Lab extension built first."""

    sub_commands = [("build_lab", None), *build.sub_commands]


setup(cmdclass={"build": Build, "build_lab": BuildLab}, distclass=LabDistribution, data_files=[])
