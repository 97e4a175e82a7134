"""Text in, token windows out: documents with domain labels, packed into fixed-length windows.

Every token carries metadata (document, domain, position in its document) so that analyses can
group by it. Sources: the shipped corpus by name, the user's text or JSONL files, or a Hugging
Face `datasets` dataset.
"""

from __future__ import annotations

import gzip
import json
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from workbench.errors import WorkbenchError
from workbench.paths import corpus_dir
from workbench.registry import Registry


@dataclass(frozen=True)
class Document:
    id: str
    domain: str
    text: str


@dataclass(frozen=True)
class CorpusSpec:
    """A named corpus shipped with (or registered in) the workbench, with its splits."""

    name: str
    folder: Path
    splits: tuple[str, ...]
    licence: str


CORPORA: Registry[CorpusSpec] = Registry(
    "corpus", how_to_add="Pass your own text with --text FILE (.txt, or .jsonl with a 'text' field)."
)
CORPORA.register(
    "pydocs",
    CorpusSpec("pydocs", corpus_dir(), ("train", "heldout"), "PSF License 2 (data/corpus/LICENSE.txt)"),
)
DEFAULT_CORPUS = "pydocs"
DEFAULT_SPLIT = "heldout"
# A text file with more than this share of its bytes undecodable as UTF-8 or control characters is refused
# as not text: binary files (safetensors, gzip, executables) measure above 0.5, Latin-1 prose below 0.25.
NOT_TEXT_LIMIT = 0.3


def load_corpus(name: str = DEFAULT_CORPUS, split: str = DEFAULT_SPLIT) -> list[Document]:
    """The documents of one split of a named corpus (default: the shipped corpus's held-out split)."""
    spec = CORPORA.get(name)
    if split not in spec.splits:
        raise WorkbenchError(f"Corpus {name!r} has no split {split!r}; its splits: {', '.join(spec.splits)}.")
    path = spec.folder / f"{split}.jsonl.gz"
    if not path.is_file():
        raise WorkbenchError(
            f"Corpus file {path} is missing; rebuild it with python -m workbench.demo.build_corpus."
        )
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [Document(**json.loads(line)) for line in f]


def read_text_files(paths: Iterable[str | Path], default_domain: str = "text") -> list[Document]:
    """The user's own text: a .txt file is one document; each line of a .jsonl file is one.

    JSONL lines need a "text" field and may carry "domain" and "id".
    """
    docs: list[Document] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.is_file():
            raise WorkbenchError(f"Text file {path} not found.")
        if path.suffix in (".jsonl", ".ndjson"):
            for n, line in enumerate(read_text(path).split("\n")):  # not splitlines: JSON allows U+2028
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    text = row["text"]
                except (json.JSONDecodeError, KeyError, TypeError) as err:
                    raise WorkbenchError(
                        f"{path}, line {n + 1}: expected a JSON object with a 'text' field ({err})."
                    ) from err
                domain = str(row.get("domain", default_domain))
                docs.append(Document(str(row.get("id", f"{path.name}:{n}")), domain, text))
        else:
            docs.append(Document(path.name, default_domain, read_text(path)))
    if not docs:
        raise WorkbenchError("The given text files hold no documents.")
    return docs


def read_text(path: Path) -> str:
    """A file's text as UTF-8; refused when it is mostly not text, a note on stderr for a few bad bytes.

    Undecodable bytes become U+FFFD each. Bytes that are not text: undecodable ones and control
    characters other than whitespace (NUL-filled or binary files decode without an error).
    """
    data = path.read_bytes()
    text, undecodable = re.subn("[\udc80-\udcff]", "\ufffd", data.decode("utf-8", errors="surrogateescape"))
    control = len(re.findall(r"[\x00-\x08\x0e-\x1f\x7f]", text))
    if data and (undecodable + control) / len(data) > NOT_TEXT_LIMIT:
        raise WorkbenchError(
            f"{path} is not UTF-8 text: {(undecodable + control) / len(data):.0%} of its {len(data):,} bytes "
            f"are not ({undecodable:,} undecodable as UTF-8, {control:,} control characters). Pass text "
            "files (.txt, or .jsonl with a 'text' field); convert other encodings first, e.g. "
            "`iconv -f latin1 -t utf-8`."
        )
    if undecodable:
        print(
            f"note: {path}: {undecodable:,} of {len(data):,} bytes are not UTF-8; each is read as U+FFFD.",
            file=sys.stderr,
        )
    return text


def from_hf_dataset(
    dataset: Any, text_field: str = "text", domain_field: str | None = None
) -> list[Document]:
    """Documents from a Hugging Face `datasets` dataset (or any iterable of dict rows)."""
    docs = []
    for n, row in enumerate(dataset):
        domain = str(row[domain_field]) if domain_field else "dataset"
        docs.append(Document(str(row.get("id", n)), domain, row[text_field]))
    return docs


@dataclass
class TokenBatch:
    """A batch of windows: token ids [batch, pos] and per-token metadata of the same shape."""

    tokens: torch.Tensor
    doc: torch.Tensor
    domain: torch.Tensor
    position: torch.Tensor
    window: torch.Tensor  # [batch] index of each window in its TokenWindows


@dataclass
class TokenWindows:
    """Documents tokenized, packed end to end (separator token between them), cut into windows."""

    tokens: torch.Tensor  # [n_windows, context] int64
    doc: torch.Tensor  # [n_windows, context] int32 index into doc_ids
    domain: torch.Tensor  # [n_windows, context] int16 index into domains
    position: torch.Tensor  # [n_windows, context] int32 position of the token in its document
    doc_ids: list[str]
    domains: list[str]
    slice_info: dict[str, Any] = field(default_factory=dict)  # provenance of the selection
    offset: int = 0  # index of the first window in the windows this is a part of (`part`)

    @property
    def n_windows(self) -> int:
        return self.tokens.shape[0]

    @property
    def context(self) -> int:
        return self.tokens.shape[1]

    @property
    def n_tokens(self) -> int:
        return self.tokens.numel()

    def batches(self, batch_size: int, first_window: int = 0) -> Iterator[TokenBatch]:
        """Consecutive batches of whole windows, from `first_window` on (resumed captures skip the rest)."""
        for start in range(first_window, self.n_windows, batch_size):
            part = slice(start, start + batch_size)
            yield TokenBatch(
                self.tokens[part],
                self.doc[part],
                self.domain[part],
                self.position[part],
                torch.arange(self.offset + start, self.offset + min(start + batch_size, self.n_windows)),
            )

    def every(self, step: int, first: int) -> TokenWindows:
        """Windows first, first + step, first + 2·step, ...: one process's share of N (`offset` unused)."""
        rows = slice(first, None, step)
        return TokenWindows(
            self.tokens[rows].clone(),
            self.doc[rows].clone(),
            self.domain[rows].clone(),
            self.position[rows].clone(),
            self.doc_ids,
            self.domains,
            self.slice_info | {"share": f"windows {first}::{step}"},
        )

    def part(self, start: int, stop: int) -> TokenWindows:
        """Windows start..stop (a copy, so that it travels alone to a worker); their batches keep the
        window indices of the whole (`offset`), so a part's capture carries the whole's metadata."""
        rows = slice(start, stop)
        return TokenWindows(
            self.tokens[rows].clone(),
            self.doc[rows].clone(),
            self.domain[rows].clone(),
            self.position[rows].clone(),
            self.doc_ids,
            self.domains,
            self.slice_info,
            self.offset + start,
        )

    def select(self, n_tokens: int | None, seed: int = 0) -> TokenWindows:
        """Whole windows covering at least `n_tokens` (all when None), in a seeded random order.

        Every selection, the whole text included, is the first windows of one seeded permutation, so
        documents and domains are mixed: any prefix of the result (a short training run, the first
        batches) draws from every part of the text in proportion, not from the documents that came first.
        """
        total = self.n_windows
        n = total if n_tokens is None else min(total, max(1, -(-n_tokens // self.context)))
        order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n]
        info = self.slice_info | {
            "selection_seed": seed,
            "window_order": "seeded permutation",  # (older selections kept document order)
            "windows": n,
            "windows_available": total,
            "tokens": n * self.context,
        }
        return TokenWindows(
            self.tokens[order],
            self.doc[order],
            self.domain[order],
            self.position[order],
            self.doc_ids,
            self.domains,
            info,
        )


def make_windows(
    docs: list[Document],
    tokenizer: Any,
    context: int,
    separator_id: int,
    source: dict[str, Any] | None = None,
) -> TokenWindows:
    """Tokenize documents (no BOS), join them with `separator_id` and cut into `context`-long windows.

    The separator closes each document and carries that document's metadata. The last partial
    window is dropped.
    """
    domains = sorted({d.domain for d in docs})
    ids: list[int] = []
    doc_idx: list[int] = []
    dom_idx: list[int] = []
    pos: list[int] = []
    for n, doc in enumerate(docs):
        toks = tokenizer(doc.text, add_special_tokens=False)["input_ids"] + [separator_id]
        ids.extend(toks)
        doc_idx.extend([n] * len(toks))
        dom_idx.extend([domains.index(doc.domain)] * len(toks))
        pos.extend(range(len(toks)))
    n_windows = len(ids) // context
    if n_windows == 0:
        raise WorkbenchError(
            f"The text holds {len(ids)} tokens, fewer than one window of {context}; give more text "
            "or a shorter context."
        )
    keep = n_windows * context

    def shaped(values: list[int], dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(values[:keep], dtype=dtype).view(n_windows, context)

    info = (source or {}) | {
        "documents": len(docs),
        "context": context,
        "separator_token_id": separator_id,
        "tokens_total": len(ids),
        "bos": False,
    }
    return TokenWindows(
        shaped(ids, torch.long),
        shaped(doc_idx, torch.int32),
        shaped(dom_idx, torch.int16),
        shaped(pos, torch.int32),
        [d.id for d in docs],
        domains,
        info,
    )


def windows_for(
    handle: Any,
    corpus: str | None = None,
    text: list[str] | None = None,
    split: str = DEFAULT_SPLIT,
    context: int = 128,
    n_tokens: int | None = None,
    seed: int = 0,
) -> TokenWindows:
    """The usual entry point: windows of a named corpus or of text files, for one model's tokenizer.

    `corpus` may name a split after a colon (`pydocs:train`); the default split is the held-out one.
    """
    if text:
        docs, source = read_text_files(text), {"text_files": [str(p) for p in text]}
    else:
        name, _, named_split = (corpus or DEFAULT_CORPUS).partition(":")
        split = named_split or split
        docs, source = load_corpus(name, split), {"corpus": name, "split": split}
    check_context(handle, context)
    windows = make_windows(docs, handle.tokenizer, context, handle.separator_token_id, source)
    return windows.select(n_tokens, seed)


def check_context(handle: Any, context: int) -> None:
    """Refuse a window longer than the model's positions (rather than cutting it short unasked)."""
    if context > handle.facts.n_ctx:
        raise WorkbenchError(
            f"A context of {context} tokens is longer than {handle.name}'s {handle.facts.n_ctx} positions; "
            f"give --context {handle.facts.n_ctx} or less."
        )


def random_windows(vocab_size: int, n_tokens: int, context: int, seed: int = 0) -> TokenWindows:
    """Uniformly random token ids (the lazy-neuron paper's random-input experiment), domain "random"."""
    n = max(1, -(-n_tokens // context))
    tokens = torch.randint(0, vocab_size, (n, context), generator=torch.Generator().manual_seed(seed))
    doc = torch.arange(n, dtype=torch.int32).unsqueeze(1).expand(n, context).contiguous()
    position = torch.arange(context, dtype=torch.int32).expand(n, context).contiguous()
    info = {
        "random_tokens": True,
        "vocab_size": vocab_size,
        "context": context,
        "selection_seed": seed,
        "windows": n,
        "tokens": n * context,
    }
    return TokenWindows(
        tokens,
        doc,
        torch.zeros(n, context, dtype=torch.int16),
        position,
        [f"random-{i}" for i in range(n)],
        ["random"],
        info,
    )
