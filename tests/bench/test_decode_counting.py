"""``wmtp bench decode --peers`` counts the same tokens on both sides: those each call made, the
prompt left out, no row stopping early (CPU, tiny model, real transformers ``generate``)."""

import warnings

import pytest
import torch

from wmtp.bench import decode_peers
from wmtp.eval.generate import Sampling
from wmtp.eval.speed import model_from_flavour

NEW_TOKENS, BATCH = 4, 3


@pytest.fixture(scope="module")
def model():
    return model_from_flavour("tiny", n_future_tokens=2, dtype="float32", device="cpu")


def _figures(model, prompt_len: int) -> dict:
    prompt = torch.randint(3, model.args.vocab_size, (prompt_len,)).tolist()
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        sampled = Sampling(temperature=0.8, top_p=0.95)
        return decode_peers.peer_figures(model, prompt, NEW_TOKENS, BATCH, sampled)["sides"]


def test_wmtp_and_hugging_face_generate_count_the_same_new_tokens(model):
    sides = _figures(model, prompt_len=7)
    for name in ("wmtp", "hf_dynamic_cache"):
        assert sides[name]["batch1_new_tokens"] == NEW_TOKENS, name
        assert sides[name][f"batch{BATCH}_new_tokens"] == BATCH * NEW_TOKENS, name


def test_a_side_is_credited_only_with_the_tokens_it_made(model):
    """wmtp stops a row at the model's context (``max_seq_len``); Hugging Face does not: each
    side's tokens/s counts what it generated, never the number asked for."""
    room = 2
    sides = _figures(model, prompt_len=model.args.max_seq_len - room)
    assert sides["wmtp"]["batch1_new_tokens"] == room
    assert sides["wmtp"][f"batch{BATCH}_new_tokens"] == BATCH * room
    assert sides["hf_dynamic_cache"]["batch1_new_tokens"] == NEW_TOKENS


@pytest.mark.parametrize("rows", [1, 3])
def test_new_tokens_leave_the_prompt_out_on_both_sides(rows):
    from wmtp.eval.generate import Completion

    ids_BS = torch.zeros(rows, 10 + NEW_TOKENS, dtype=torch.long)
    completions = [Completion([1] * NEW_TOKENS, "", "length") for _ in range(rows)]
    assert decode_peers.new_tokens_of(ids_BS, 10) == rows * NEW_TOKENS
    assert decode_peers.new_tokens_of(completions, 10) == rows * NEW_TOKENS


def _weights_read(model, prompt: list[int], new_tokens: int) -> tuple[set[int], list[int]]:
    """What plain decoding reads, seen by the dispatcher: the storages of the parameters any
    operator takes, and the rows each embedding lookup takes."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from wmtp.eval.generate import StopRule, generate

    storages: set[int] = set()
    lookups: list[int] = []

    class Reads(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            for t in torch.utils._pytree.tree_leaves((args, kwargs or {})):
                if isinstance(t, torch.Tensor):
                    storages.add(t.untyped_storage().data_ptr())
            if func is torch.ops.aten.embedding.default:
                lookups.append(args[1].numel())
            return func(*args, **(kwargs or {}))

    never = StopRule(lambda ids: "", stop=(), eos_id=None)
    with Reads():
        generate(model, [prompt], never, max_new_tokens=new_tokens)
    return storages, lookups


def test_the_bandwidth_limits_weight_bytes_are_the_weights_a_plain_step_reads(model):
    """An independent count of ``weight_bytes_per_step``: every parameter some operator of plain
    decoding takes (the extra heads' layers are not among them), the embedding apart: a step
    looks one row of it up."""
    prompt = torch.randint(3, model.args.vocab_size, (5,)).tolist()
    storages, lookups = _weights_read(model, prompt, new_tokens=4)
    embedding = model.tok_embeddings.weight
    read = [
        p
        for p in model.parameters()
        if p.untyped_storage().data_ptr() in storages and p is not embedding
    ]
    assert sum(p.numel() * p.element_size() for p in read) == (
        decode_peers.weight_bytes_per_step(model)
    )
    unread = list(model.extra_heads.parameters())
    assert unread and not any(p.untyped_storage().data_ptr() in storages for p in unread)
    assert lookups[0] >= len(prompt) and lookups[1:] == [1] * (4 - 1)  # a step: one row
