"""A stand-in for the LLaMA-2 tokenizer: a 32,000-piece SentencePiece BPE model trained on code.

No real weights or tokenizer files can be downloaded on the machines wmtp is benchmarked on, so the
production recipes (``recipes/base.toml``: ``tokenizer.path = storage/models/llama2-7b-mtp``) run
with randomly initialised models and this tokenizer: the same kind (SentencePiece BPE), the same
vocabulary size (32,000, ids 0-2 = unk/bos/eos as LLaMA's), so sequence lengths, embedding and
unembedding shapes - everything a speed or memory figure depends on - match LLaMA-2's. Its pieces
are learnt from Python source (the interpreter's standard library by default).

    python bench/standin_tokenizer.py storage/models/llama2-7b-mtp [--corpus DIR] [--vocab-size N]
"""

from __future__ import annotations

import argparse
import random
import sysconfig
import tempfile
from pathlib import Path


def corpus_lines(root: Path, limit_bytes: int) -> list[str]:
    files = sorted(root.rglob("*.py"))
    random.Random(0).shuffle(files)
    lines, size = [], 0
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for line in text.splitlines():
            if line.strip():
                lines.append(line)
                size += len(line)
        if size >= limit_bytes:
            break
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for tokenizer.model")
    parser.add_argument("--corpus", type=Path, default=Path(sysconfig.get_paths()["stdlib"]))
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--corpus-mb", type=int, default=40)
    args = parser.parse_args()
    import sentencepiece as spm

    lines = corpus_lines(args.corpus, args.corpus_mb * 2**20)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "corpus.txt"
        text.write_text("\n".join(lines) + "\n", encoding="utf-8")
        spm.SentencePieceTrainer.train(
            input=str(text),
            model_prefix=str(args.out / "tokenizer"),
            model_type="bpe",
            vocab_size=args.vocab_size,
            # every character its own piece where the vocabulary has room (the standard
            # library's text has ~4,400); rare ones left to the byte pieces in a small one
            character_coverage=1.0 if args.vocab_size >= 8192 else 0.999,
            byte_fallback=True,  # as LLaMA's: any text encodes
            split_digits=True,
            allow_whitespace_only_pieces=True,
            remove_extra_whitespaces=False,  # code: indentation matters
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            input_sentence_size=2_000_000,
            shuffle_input_sentence=True,
            num_threads=2,
            minloglevel=2,
        )
    (args.out / "tokenizer.vocab").unlink(missing_ok=True)
    print(f"wrote {args.out / 'tokenizer.model'} ({args.vocab_size} pieces, {len(lines)} lines)")


if __name__ == "__main__":
    main()
