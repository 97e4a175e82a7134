"""Train the tiny models' byte-level BPE tokenizer on the corpus's train split.

Run `python -m workbench.demo.build_tokenizer`; writes data/corpus/tokenizer.json (4096 tokens).
Uses Hugging Face `tokenizers` (byte-level BPE, the GPT-2 scheme) rather than hand-written BPE.
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from workbench.paths import corpus_dir

VOCAB_SIZE = 4096
EOS = "<|endoftext|>"


def _texts(path: Path) -> Iterator[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)["text"]


def train_tokenizer(corpus_dir: Path, vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_texts(corpus_dir / "train.jsonl.gz"), trainer=trainer)
    return tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=corpus_dir())
    args = parser.parse_args()
    tokenizer = train_tokenizer(args.corpus)
    tokenizer.save(str(args.corpus / "tokenizer.json"))
    print(f"wrote {args.corpus / 'tokenizer.json'} ({tokenizer.get_vocab_size()} tokens)")


if __name__ == "__main__":
    main()
