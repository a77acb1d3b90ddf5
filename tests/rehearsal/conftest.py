"""Stand-ins for the production recipes' inputs, laid out where the recipes name them.

``recipes/base.toml`` and the recipes that extend it read, relative to the working directory::

    storage/models/llama2-7b-mtp/params.json, consolidated.pth, tokenizer.model   (Meta layout)
    storage/models/sheared-llama-2.7b/config.json, model.safetensors                 (Hugging Face)
    storage/datasets/codecontests/processed/train.jsonl, train_metadata.json        (processed data)

Each stand-in is written by its format's own writer: SentencePiece's trainer, ``torch.save`` of a
state dict under Meta's key names beside a ``params.json`` of Meta's keys, transformers'
``save_pretrained``, and ``wmtp data index`` for the metadata. The models have the sizes of the
``tiny`` flavour (``wmtp.models.args.FLAVOURS``), so a recipe runs as written once its flavours
say ``tiny``. Nothing is downloaded.

``WMTP_REHEARSAL_DEVICE`` (``cpu`` by default, ``cuda`` on a GPU machine) is the device the
recipes run on. Every recipe runs on one process and again on two, launched as a user launches
several GPUs (``--nproc-per-node 2``: FSDP2 over gloo on the CPU); ``WMTP_REHEARSAL_NPROC``
(``1,2`` on the CPU, ``1`` on a GPU machine) lists the process counts to rehearse.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.rehearsal.stand_in_text import CODE_CORPUS, PROBLEMS

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"
DEVICE = os.environ.get("WMTP_REHEARSAL_DEVICE", "cpu")
NPROCS = tuple(
    int(n)
    for n in os.environ.get("WMTP_REHEARSAL_NPROC", "1,2" if DEVICE == "cpu" else "1").split(",")
)
"""Processes per ``wmtp run`` / ``wmtp eval``: the whole chain is rehearsed once for each."""

META_DIR = Path("storage/models/llama2-7b-mtp")
HF_DIR = Path("storage/models/sheared-llama-2.7b")
DATA_DIR = Path("storage/datasets/codecontests/processed")
"""Where base.toml, critic.toml and verifiable.toml look, relative to the working directory."""

VOCAB_SIZE = 512
"""Pieces of the stand-in tokenizer (Llama-2's has 32,000): the models' embedding rows."""

TINY = {"dim": 64, "n_heads": 4, "n_kv_heads": 2, "multiple_of": 32, "ffn_dim": 192}
"""The ``tiny`` flavour's widths (its SwiGLU width is 32 * ceil(int(8 * 64 / 3) / 32) = 192)."""

META_PARAMS = {
    "dim": TINY["dim"],
    "n_layers": 6,  # trunk of 2 layers, head 1 = layers[-1], heads 2..4 = extra_heads
    "n_heads": TINY["n_heads"],
    "n_kv_heads": TINY["n_kv_heads"],
    "vocab_size": -1,  # Meta's convention: from the tokenizer (the embedding's rows)
    "multiple_of": TINY["multiple_of"],
    "ffn_dim_multiplier": None,
    "norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "n_future_tokens": 4,  # as Meta's 7B MTP release and base.toml
}
"""``params.json`` with the keys of Meta's releases (Llama-2 plus the MTP ``n_future_tokens``)."""


# --------------------------------------------------------------------------- the dataset


def dataset_rows() -> list[dict]:
    """``train.jsonl`` rows in the documented format, correct and incorrect interleaved."""
    rows = []
    for problem in PROBLEMS:
        for correct, incorrect in zip(problem["correct"], problem["incorrect"], strict=True):
            for output, is_correct in ((correct, True), (incorrect, False)):
                rows.append(
                    {
                        "instruction": problem["instruction"],
                        "input": "",
                        "output": output,
                        "problem_id": problem["id"],
                        "is_correct": is_correct,
                        "difficulty": problem["difficulty"],
                    }
                )
    return rows


def write_dataset(directory: Path) -> Path:
    """``train.jsonl`` of :func:`dataset_rows` (its metadata comes from ``wmtp data index``)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in dataset_rows()), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- the tokenizer


def write_tokenizer(directory: Path) -> Path:
    """A Llama-2-style SentencePiece BPE ``tokenizer.model`` (``bench/standin_tokenizer.py``'s
    settings at :data:`VOCAB_SIZE` pieces): unk/bos/eos = 0/1/2, no pad piece, byte fallback."""
    import sentencepiece

    directory.mkdir(parents=True, exist_ok=True)
    texts = [CODE_CORPUS]
    for row in dataset_rows():
        texts.append(f"{row['instruction']}\n{row['output']}")
    corpus = directory / "corpus.txt"
    corpus.write_text("\n".join(texts) * 4, encoding="utf-8")
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(directory / "tokenizer"),
        model_type="bpe",
        vocab_size=VOCAB_SIZE,
        character_coverage=1.0,
        byte_fallback=True,  # as Llama's: any text encodes
        split_digits=True,
        allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",  # as Llama-2: whitespace and newlines kept
        remove_extra_whitespaces=False,  # code: indentation matters
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    corpus.unlink()
    (directory / "tokenizer.vocab").unlink(missing_ok=True)
    return directory / "tokenizer.model"


# --------------------------------------------------------------------------- the models


def write_meta_checkpoint(directory: Path, vocab_size: int) -> Path:
    """Meta's layout: ``params.json`` and ``consolidated.pth`` (``torch.save`` of Meta's key names:
    ``layers.i.attention.wq.weight``, ``extra_heads.j...``, ``tok_embeddings``, ``output``)."""
    import torch

    from tests.models.builders import meta_state_dict

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    state = meta_state_dict(META_PARAMS, vocab_size)
    torch.save(state, directory / "consolidated.pth")
    (directory / "params.json").write_text(json.dumps(META_PARAMS))
    return directory


def write_hf_critic(directory: Path, vocab_size: int) -> Path:
    """A Hugging Face Llama (``config.json`` + ``model.safetensors``) through ``save_pretrained``,
    with the ``tiny`` flavour's widths and the tokenizer's vocabulary."""
    import torch
    import transformers

    torch.manual_seed(1)
    config = transformers.LlamaConfig(
        hidden_size=TINY["dim"],
        intermediate_size=TINY["ffn_dim"],
        num_hidden_layers=2,
        num_attention_heads=TINY["n_heads"],
        num_key_value_heads=TINY["n_kv_heads"],
        vocab_size=vocab_size,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(directory, safe_serialization=True)
    return directory


# --------------------------------------------------------------------------- the working directory


@dataclass
class Workdir:
    """A temporary working directory holding the stand-ins, and the ``wmtp`` CLI run inside it."""

    root: Path
    env: dict[str, str]
    nproc: int = 1
    """Processes of every ``wmtp run`` and ``wmtp eval`` (:attr:`launch`)."""
    log: list[str] = field(default_factory=list)
    """``command: seconds`` of every CLI call (printed at the end of the module)."""
    failed: dict[str, str] = field(default_factory=dict)
    """Recipe -> why its run failed, so a later test does not run it again."""

    def wmtp(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """``python -m wmtp.cli ARGS`` with the working directory as cwd; a non-zero exit fails
        the test with the command line and the end of its output."""
        cmd = [sys.executable, "-m", "wmtp.cli", *args]
        start = time.monotonic()
        done = subprocess.run(
            cmd,
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        seconds = time.monotonic() - start
        self.log.append(f"{seconds:6.1f} s  wmtp {short(args)}")
        if done.returncode != 0:
            output = (done.stdout + done.stderr)[-6000:]
            pytest.fail(
                f"`wmtp {' '.join(args)}` (cwd {self.root}) exited {done.returncode} "
                f"after {seconds:.1f} s:\n{output}",
                pytrace=False,
            )
        return done

    @property
    def launch(self) -> tuple[str, ...]:
        """The arguments that run a command on :attr:`nproc` processes."""
        return ("--nproc-per-node", str(self.nproc)) if self.nproc > 1 else ()

    def latest(self, experiment: str) -> Path:
        """``runs/<experiment>/latest``, resolved to the run it names."""
        return (self.root / "runs" / experiment / "latest").resolve()


def short(args: tuple[str, ...]) -> str:
    """``ARGS`` up to the first ``--set``, recipes by file name: a line of the timing log."""
    head = args[: args.index("--set")] if "--set" in args else args
    return " ".join(Path(a).name if a.endswith(".toml") else a for a in head)


def cli_env(root: Path) -> dict[str, str]:
    """The environment of the CLI: this checkout's ``wmtp`` first, caches inside ``root``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["WMTP_CACHE_DIR"] = str(root / ".cache" / "wmtp")
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("WMTP_ATTENTION", None)  # the recipes' attention = "auto" decides
    return env


@pytest.fixture(scope="module", params=NPROCS, ids=lambda n: f"{n}proc")
def nproc(request) -> int:
    return request.param


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, nproc) -> Iterator[Workdir]:
    """The stand-ins in a fresh working directory, laid out as the production recipes name them;
    ``train_metadata.json`` built by the real ``wmtp data index``; commands on ``nproc``
    processes."""
    import torch

    from wmtp.data.tokenizers import load_tokenizer

    if DEVICE not in ("cpu", "cuda"):
        pytest.fail(f"WMTP_REHEARSAL_DEVICE={DEVICE!r}: use cpu or cuda", pytrace=False)
    if DEVICE == "cuda" and not torch.cuda.is_available():
        pytest.fail("WMTP_REHEARSAL_DEVICE=cuda but torch sees no GPU", pytrace=False)
    root = tmp_path_factory.mktemp("rehearsal")
    tokenizer = write_tokenizer(root / META_DIR)
    vocab = load_tokenizer("sentencepiece", tokenizer).vocab_size
    write_meta_checkpoint(root / META_DIR, vocab)
    write_hf_critic(root / HF_DIR, vocab)
    write_dataset(root / DATA_DIR)
    work = Workdir(root, cli_env(root), nproc)
    work.wmtp(
        "data",
        "index",
        str(DATA_DIR),
        "--tokenizer",
        "sentencepiece",
        "--tokenizer-path",
        str(META_DIR / "tokenizer.model"),
    )
    yield work
    print("\nrehearsal CLI calls:\n  " + "\n  ".join(work.log))
