"""Per-token labels that specialization is measured against: domain, token class, position bucket, token.

Each labeller maps a batch's metadata (`token`, `domain`, `position`, as the capture loop gives them)
to class indices, and names its classes, so contingency tables can be read back by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.errors import WorkbenchError
from workbench.experts.defaults import LABELS

TOKEN_CLASSES = ("letters", "digits", "punctuation", "whitespace", "mixed", "special")
POSITION_EDGES = (1, 4, 16, 64, 256)  # buckets [0], [1, 4), [4, 16), [16, 64), [64, 256), [256, ∞)


def token_class(text: str, special: bool = False) -> str:
    """The class of one token's decoded text; a leading space does not change the class of a word."""
    if special:
        return "special"
    body = text.strip()
    if not body:
        return "whitespace"
    if body.isalpha():
        return "letters"
    if body.isdigit():
        return "digits"
    if not any(ch.isalnum() or ch.isspace() for ch in body):
        return "punctuation"
    return "mixed"


def token_class_table(tokenizer, vocab_size: int) -> torch.Tensor:
    """Class index of every token id [vocab_size] (ids the tokenizer does not know count as special)."""
    specials = set(getattr(tokenizer, "all_special_ids", []) or [])
    known = len(tokenizer)
    table = torch.full((vocab_size,), TOKEN_CLASSES.index("special"), dtype=torch.long)
    for i in range(min(vocab_size, known)):
        table[i] = TOKEN_CLASSES.index(token_class(tokenizer.decode([i]), special=i in specials))
    return table


def position_bucket_names() -> list[str]:
    edges = (0, *POSITION_EDGES)
    names = [f"{lo}-{hi - 1}" if hi - lo > 1 else str(lo) for lo, hi in zip(edges, edges[1:], strict=False)]
    return names + [f"{edges[-1]}+"]


@dataclass
class Labeller:
    """Turns batch metadata into class indices for the chosen labels."""

    names: list[str]
    domains: list[str]
    token_classes: torch.Tensor  # [vocab] class index per token id
    vocab_size: int

    @classmethod
    def build(cls, names: list[str], domains: list[str], tokenizer, vocab_size: int) -> Labeller:
        unknown = [n for n in names if n not in LABELS]
        if unknown:
            raise WorkbenchError(f"Unknown label(s) {unknown}; choose from {', '.join(LABELS)}.")
        table = token_class_table(tokenizer, vocab_size) if "token_class" in names else torch.empty(0)
        return cls(list(names), list(domains), table, vocab_size)

    def classes(self, name: str) -> list[str]:
        if name == "domain":
            return self.domains
        if name == "token_class":
            return list(TOKEN_CLASSES)
        if name == "position":
            return position_bucket_names()
        return [str(i) for i in range(self.vocab_size)]

    def size(self, name: str) -> int:
        return self.vocab_size if name == "token" else len(self.classes(name))

    def __call__(self, meta: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for name in self.names:
            if name == "domain":
                out[name] = meta["domain"].long()
            elif name == "token_class":
                out[name] = self.token_classes[meta["token"].long()]
            elif name == "position":
                out[name] = torch.bucketize(meta["position"].long(), torch.tensor(POSITION_EDGES), right=True)
            else:
                out[name] = meta["token"].long()
        return out
