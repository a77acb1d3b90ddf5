"""Which settings of a compiled block survive a second sequence length (GPU diagnosis).

A tiny LlamaMTP (two heads) trains four steps of lengths 96, 112, 128 and 80 under autocast,
its blocks prepared as the trainer prepares them (``wmtp.parallel``), with one setting changed:

    as_written   LoRA with dropout 0.05, activation checkpointing, compiled with dynamic shapes
                 (Dynamo's default: the second length recompiles with symbolic sizes)
    no_dropout   the same with LoRA dropout 0
    no_lora      full fine-tuning (no LoRA)
    no_ac        no activation checkpointing
    static       compiled with static shapes (``dynamic=False``: one graph per length)

On an H200 with torch 2.11, ``as_written`` fails at the second length in Inductor's partitioner
("Node convert_element_type_... was invalid, but is output") and every other variant trains:
``bench/results/h200_compile_probe.md``. Each variant runs in its own process (fresh Dynamo
caches); one JSON line each on stdout.

    python bench/compile_probe.py [VARIANT...]        (default: all)
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
import traceback

VARIANTS = ("as_written", "no_dropout", "no_lora", "no_ac", "static")
LENGTHS = (96, 112, 128, 80)
VOCAB = 512


def build(variant: str):
    import torch

    from wmtp.models.args import flavour
    from wmtp.models.llama_mtp import LlamaMTP
    from wmtp.models.lora import apply_lora
    from wmtp.parallel import cast_parameters
    from wmtp.parallel.checkpointing import apply_activation_checkpointing

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = LlamaMTP(dataclasses.replace(flavour("tiny"), vocab_size=VOCAB, n_future_tokens=2))
    if variant != "no_lora":
        apply_lora(model, rank=8, alpha=16.0, dropout=0.0 if variant == "no_dropout" else 0.05)
    blocks = model.blocks()
    if variant != "no_ac":
        apply_activation_checkpointing(blocks, True)
    for block in blocks:
        block.compile(dynamic=False if variant == "static" else None)
    cast_parameters(model, device, torch.bfloat16)
    return model, device


def train(variant: str) -> dict:
    """Four steps of the variant; each step's loss and seconds, or the first error."""
    import torch
    import torch.nn.functional as F

    model, device = build(variant)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    steps = []
    for length in LENGTHS:
        started = time.perf_counter()
        try:
            tokens_BS = torch.randint(0, VOCAB, (2, length), device=device)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                logits_BSV = model.output(model.head_hidden(model.trunk(tokens_BS), 1)).float()
            loss = F.cross_entropy(logits_BSV[:, :-1].flatten(0, 1), tokens_BS[:, 1:].flatten())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            steps.append({"length": length, "loss": loss.item(),
                          "s": round(time.perf_counter() - started, 1)})  # fmt: skip
        except Exception as exc:  # the failure is the finding: report it and stop
            error = traceback.format_exception_only(exc)[-1].strip()
            steps.append({"length": length, "error": error.splitlines()[-1][:300]})
            break
    return {"variant": variant, "device": str(device), "steps": steps}


def main(argv: list[str]) -> None:
    if len(argv) == 2 and argv[0] == "--one":
        print(json.dumps(train(argv[1])), flush=True)
        return
    for variant in argv or VARIANTS:
        assert variant in VARIANTS, f"unknown variant {variant!r} (known: {', '.join(VARIANTS)})"
        subprocess.run([sys.executable, __file__, "--one", variant], check=False)


if __name__ == "__main__":
    main(sys.argv[1:])
