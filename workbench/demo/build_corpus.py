"""Build the shipped two-domain corpus from Debian's Python 3.11 packages (PSF licence).

prose: the English documentation of Python 3.11 (`python3.11-doc`, reStructuredText sources),
       keeping only un-indented prose paragraphs (code examples and directives are dropped).
code:  the Python standard library's source (`libpython3.11-stdlib`), one module per document.

Run `python -m workbench.demo.build_corpus` (needs `apt-get download`, i.e. Debian's registry).
Output: data/corpus/{train,heldout}.jsonl.gz and data/corpus/SOURCE.json.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import subprocess
import tempfile
from pathlib import Path

from workbench.paths import corpus_dir

DEBS = {
    "prose": "python3.11-doc=3.11.2-6+deb12u9",
    "code": "libpython3.11-stdlib=3.11.2-6+deb12u9",
}
HELDOUT_FRACTION = 0.08
MAX_BYTES = {"prose": 3_200_000, "code": 3_200_000}
_ROLE = re.compile(r":[a-z:]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`")


def _extract(deb_spec: str, workdir: Path) -> Path:
    subprocess.run(["apt-get", "download", deb_spec], cwd=workdir, check=True, capture_output=True)
    deb = next(workdir.glob(deb_spec.split("=")[0] + "_*.deb"))
    root = workdir / deb_spec.split("=")[0]
    subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    return root


def clean_rst(text: str) -> str:
    """Keep un-indented prose paragraphs of an rst file; drop code, directives, tables and titles."""
    paragraphs, current = [], []
    for line in text.splitlines():
        if not line.strip() or line[0].isspace():
            if current:
                paragraphs.append(" ".join(current))
                current = []
            continue
        if line.startswith("..") or re.fullmatch(r"([=\-~^*#+\"'`])\1{2,}", line.strip()):
            current = []  # a directive, or the underline of a title: drop the title too
            continue
        current.append(line.strip())
    if current:
        paragraphs.append(" ".join(current))
    keep = []
    for p in paragraphs:
        p = _ROLE.sub(r"\1", p).replace("``", "").replace("**", "")
        if len(p.split()) >= 8 and not p.startswith(("|", "+", ">>>")):
            keep.append(p.rstrip(":") + ("." if p.endswith("::") else ""))
    return "\n\n".join(keep)


def _documents(prose_root: Path, code_root: Path) -> list[dict]:
    docs = []
    for path in sorted((prose_root / "usr/share/doc/python3.11/html/_sources").rglob("*.rst.txt")):
        text = clean_rst(path.read_text(encoding="utf-8", errors="replace"))
        if len(text) > 500:
            rel = path.relative_to(prose_root / "usr/share/doc/python3.11/html/_sources")
            docs.append({"id": f"doc/{rel}", "domain": "prose", "text": text})
    for path in sorted((code_root / "usr/lib/python3.11").rglob("*.py")):
        if path.is_symlink():
            continue
        rel = path.relative_to(code_root / "usr/lib/python3.11")
        if "test" in rel.parts[0] or "idlelib" in rel.parts[0]:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if 500 < len(text) < 200_000:
            docs.append({"id": f"lib/{rel}", "domain": "code", "text": text})
    return docs


def _is_heldout(doc_id: str) -> bool:
    digest = hashlib.sha256(doc_id.encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < HELDOUT_FRACTION


def _cap(docs: list[dict]) -> list[dict]:
    """Keep documents in a hash order until each domain's byte budget is spent."""
    used = {d: 0 for d in MAX_BYTES}
    kept = []
    for doc in sorted(docs, key=lambda d: hashlib.sha256(d["id"].encode()).hexdigest()):
        if used[doc["domain"]] + len(doc["text"]) <= MAX_BYTES[doc["domain"]]:
            used[doc["domain"]] += len(doc["text"])
            kept.append(doc)
    return sorted(kept, key=lambda d: d["id"])


def build(out_dir: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        code_root = _extract(DEBS["code"], tmp_path)
        docs = _cap(_documents(_extract(DEBS["prose"], tmp_path), code_root))
        out_dir.mkdir(parents=True, exist_ok=True)
        licence = (code_root / "usr/lib/python3.11/LICENSE.txt").read_text(encoding="utf-8")
        (out_dir / "LICENSE.txt").write_text(licence, encoding="utf-8")
    splits = {"train": [d for d in docs if not _is_heldout(d["id"])]}
    splits["heldout"] = [d for d in docs if _is_heldout(d["id"])]
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {}
    for split, split_docs in splits.items():
        with gzip.GzipFile(out_dir / f"{split}.jsonl.gz", "wb", mtime=0) as f:
            for doc in split_docs:
                f.write((json.dumps(doc, ensure_ascii=False) + "\n").encode())
        summary[split] = {
            dom: {
                "documents": sum(d["domain"] == dom for d in split_docs),
                "characters": sum(len(d["text"]) for d in split_docs if d["domain"] == dom),
            }
            for dom in MAX_BYTES
        }
    source = {
        "name": "pydocs-stdlib",
        "description": "Python 3.11 documentation prose and standard-library source code",
        "domains": {
            "prose": f"Debian package {DEBS['prose']}: rst sources, un-indented paragraphs only",
            "code": f"Debian package {DEBS['code']}: .py modules (tests and idlelib excluded)",
        },
        "licence": "Python Software Foundation License Version 2 (redistributable with notice)",
        "split": f"by document, sha256(id) < {HELDOUT_FRACTION} is held out",
        "splits": summary,
        "builder": "python -m workbench.demo.build_corpus",
    }
    (out_dir / "SOURCE.json").write_text(json.dumps(source, indent=2) + "\n")
    return source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=corpus_dir())
    print(json.dumps(build(parser.parse_args().out), indent=2))


if __name__ == "__main__":
    main()
