"""``parallel.float8``: the recipe field, its refusal where float8 cannot run (through the CLI),
and torchao's conversion itself on the CPU, where torch runs float8 ``_scaled_mm`` for real: which
linears run in float8, names and checkpoints unchanged, LoRA's frozen base in float8 with its
adapters kept, a float8 step close to the plain one, the frozen base's third matmul that only
compiling drops (one graph, no break), and the same gradients under FSDP2 on two gloo ranks.
Speed and the 300-step loss are GPU figures (bench/h200.sh float8, float8_loss)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from tests.gpu import needs_cuda
from tests.train.train_helpers import REPO, TINY
from wmtp.cli import app
from wmtp.models.args import ModelArgs
from wmtp.models.llama_mtp import LlamaMTP
from wmtp.models.lora import LoRALinear, apply_lora, lora_state_dict, merge_lora
from wmtp.recipe import diff_recipes, load_recipe
from wmtp.recipe.diff import Change
from wmtp.recipe.errors import RecipeProblems

ARGS = ModelArgs(
    dim=64,
    n_layers=3,
    n_heads=8,
    n_kv_heads=1,
    vocab_size=64,
    multiple_of=16,
    max_seq_len=32,
    n_future_tokens=2,
)
"""Three blocks (one trunk layer, two heads). wk and wv are 64 -> 8 (one KV head of 8 dims):
not multiples of 16. wq, wo (64 x 64), w1, w3 (176 x 64), w2 (64 x 176) and the unembedding
(64 x 64) are."""
FLOAT8_PER_BLOCK = (
    "attention.wq",
    "attention.wo",
    "feed_forward.w1",
    "feed_forward.w2",
    "feed_forward.w3",
)
KEPT_PER_BLOCK = ("attention.wk", "attention.wv")
BLOCKS = ("layers.0", "layers.1", "extra_heads.0")


def tiny_model(*, lora: bool = False) -> LlamaMTP:
    torch.manual_seed(0)
    model = LlamaMTP(ARGS, attention="sdpa")
    model.reset_parameters(std=0.1)  # outputs that depend on the weights, for the comparisons
    if lora:
        apply_lora(model, rank=4, alpha=8)
        with torch.no_grad():  # adapters that change the output (B starts at zero)
            for name, param in model.named_parameters():
                if name.endswith("lora_B"):
                    param.normal_(0, 0.1)
    return model


def float8_model(scaling: str = "tensorwise", *, lora: bool = False) -> LlamaMTP:
    from wmtp.parallel.float8 import apply_float8

    model = tiny_model(lora=lora)
    apply_float8(model.blocks(), scaling)
    return model


def mtp_loss(model: LlamaMTP, tokens_BS: torch.Tensor) -> torch.Tensor:
    """Mean over heads of head k's cross-entropy against the token k ahead (fp32)."""
    logits_BSNV = model(tokens_BS).float()
    losses = []
    for k in range(1, model.n_heads + 1):
        logits = logits_BSNV[:, :-k, k - 1]
        losses.append(F.cross_entropy(logits.flatten(0, 1), tokens_BS[:, k:].flatten()))
    return torch.stack(losses).mean()


def tokens() -> torch.Tensor:
    return torch.randint(0, ARGS.vocab_size, (2, 32), generator=torch.Generator().manual_seed(1))


def _cpu_scaled_mm_scales_rows() -> bool:
    """Whether this torch's CPU ``_scaled_mm`` takes a scale per row (2.13 does; 2.11, the GPU
    machine's, takes one per tensor only)."""
    a = torch.ones(16, 16).to(torch.float8_e4m3fn)
    try:
        torch._scaled_mm(a, a.t(), torch.ones(16, 1), torch.ones(1, 16), out_dtype=torch.bfloat16)
    except RuntimeError:
        return False
    return True


# the recipe field ---------------------------------------------------------------------------


ON_CUDA = "parallel.device='cuda'"
"""float8 with ``device = "cpu"`` is a recipe error (tested below)."""


def test_the_field_is_off_by_default_true_is_tensorwise_and_rowwise_is_a_choice():
    def scaling(*sets: str) -> str | None:
        return load_recipe(TINY, [ON_CUDA, *sets]).recipe.parallel.float8_scaling()

    assert scaling() is None
    assert scaling("parallel.float8=false") is None
    assert scaling("parallel.float8=true") == "tensorwise"
    assert scaling("parallel.float8='tensorwise'") == "tensorwise"
    assert scaling("parallel.float8='rowwise'") == "rowwise"


def test_a_bad_value_is_a_located_message_and_float8_counts_as_numerics(tmp_path):
    text = TINY.read_text().replace("[parallel]\n", '[parallel]\nfloat8 = "fast"\n')
    line = text.splitlines().index('float8 = "fast"') + 1
    (tmp_path / "r.toml").write_text(text)
    with pytest.raises(RecipeProblems) as info:
        load_recipe(tmp_path / "r.toml")
    (problem,) = info.value.problems
    rendered = problem.render()
    assert f"r.toml:{line}:" in rendered
    assert 'parallel.float8: expected a boolean or one of "tensorwise", "rowwise"' in rendered
    plain, float8 = (
        load_recipe(TINY, [ON_CUDA, *on]).recipe for on in ([], ["parallel.float8=true"])
    )
    # a resume that switches float8 is refused unless forced: it changes what is computed
    assert diff_recipes(plain, float8) == [Change("parallel.float8", False, True, "numerics")]


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        (  # the recipe says cpu: a problem of the recipe, which `wmtp validate` reports too
            "cpu",
            "--set parallel.float8=true: parallel.float8: float8 = true needs a CUDA GPU of "
            'compute capability 8.9 or newer (H100, H200, L40S), but device = "cpu"',
        ),
        pytest.param(  # auto, on a machine without a GPU: refused when the run builds its model
            "auto",
            "parallel.float8 needs a CUDA GPU of compute capability 8.9 or newer (H100, H200, "
            "L40S); this run is on cpu. Train in the compute dtype: --set parallel.float8=false",
            marks=pytest.mark.skipif(
                torch.cuda.is_available(),
                reason="auto trains on the GPU here (test_a_float8_run_on_the_gpu_trains)",
            ),
        ),
    ],
)
def test_wmtp_run_with_float8_on_the_cpu_is_refused_naming_the_field(
    tmp_path, monkeypatch, device, expected
):
    monkeypatch.chdir(REPO)
    sets = ["parallel.float8=true", f"parallel.device='{device}'"]
    sets += [f"experiment.runs_dir='{tmp_path}'"]
    options = [a for s in sets for a in ("--set", s)]
    commands = [["run", str(TINY), *options]]
    if device == "cpu":
        commands.append(["validate", str(TINY), *options])
    for command in commands:
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2, result.output
        assert expected in " ".join(result.output.split())  # the console wraps long lines
        assert "Traceback" not in result.output


def test_a_float8_recipe_whose_rows_can_miss_a_multiple_of_16_is_refused_where_it_says_so():
    """Float8 rows pad to a multiple of 16 tokens and never past ``data.max_length``, so that
    must be a multiple of 16: ``wmtp validate`` (and so ``wmtp run``) names it, exit code 2."""
    sets = ["parallel.float8=true", "parallel.device='auto'", "data.max_length=1000"]
    options = [a for s in sets for a in ("--set", s)]
    result = CliRunner().invoke(app, ["validate", str(TINY), *options])
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert "--set data.max_length=1000: data.max_length" in said
    assert "set it to a multiple of 16 (992 or 1008)" in said
    assert "Traceback" not in result.output
    ok = CliRunner().invoke(app, ["validate", str(TINY), *options[:-2]])  # max_length 1024
    assert ok.exit_code == 0, ok.output


@needs_cuda("float8 matmuls need a GPU of capability 8.9+", capability=(8, 9))
def test_a_float8_run_on_the_gpu_trains(tmp_path, monkeypatch):
    """The tiny recipe with float8 on a GPU, as a user runs it: its padded rows (as long as the
    micro-batch's longest, two rows a micro-batch) are a multiple of 16 tokens, which the float8
    weight gradients need; before they were, the first step failed in ``torch._scaled_mm``."""
    from tests.train.train_helpers import FAST, runs_override
    from wmtp.train.metrics import read_metrics

    monkeypatch.chdir(REPO)
    sets = [*FAST, "parallel.float8=true", "parallel.device='cuda'", runs_override(tmp_path)]
    sets += ["training.max_steps=6", "training.schedule.warmup_steps=0"]
    result = CliRunner().invoke(app, ["run", str(TINY), *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    run_dir = (tmp_path / "runs" / "tiny" / "latest").resolve()
    steps = [m for m in read_metrics(run_dir) if "loss" in m]
    assert [m["step"] for m in steps] == list(range(1, 7))
    assert all(m["row_tokens"] % 16 == 0 for m in steps), [m["row_tokens"] for m in steps]
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in steps)


# the conversion (torchao, on the CPU) -------------------------------------------------------


@pytest.fixture
def torchao():
    return pytest.importorskip("torchao.float8")


def modules_of(model: LlamaMTP) -> dict[str, type]:
    return {name: type(module) for name, module in model.named_modules()}


def test_block_linears_run_in_float8_and_the_embedding_output_and_odd_sizes_do_not(torchao):
    from torchao.float8.float8_linear import Float8Linear

    from wmtp.parallel.float8 import apply_float8

    model = tiny_model()
    params = dict(model.named_parameters())
    assert apply_float8(model.blocks(), "tensorwise") == 3 * len(FLOAT8_PER_BLOCK)
    kinds = modules_of(model)
    for block in BLOCKS:
        for name in FLOAT8_PER_BLOCK:
            assert kinds[f"{block}.{name}"] is Float8Linear, name
        for name in KEPT_PER_BLOCK:  # 8 output features
            assert kinds[f"{block}.{name}"] is nn.Linear, name
    assert kinds["output"] is nn.Linear  # 64 x 64 would fit: left out on purpose
    assert kinds["tok_embeddings"] is nn.Embedding
    # the same parameter objects under the same names: optimizer, FSDP and checkpoints see no swap
    now = dict(model.named_parameters())
    assert list(now) == list(params) and all(now[n] is p for n, p in params.items())


def test_checkpoints_load_between_a_float8_and_a_plain_model(torchao):
    def same_weights(a: nn.Module, b: nn.Module) -> bool:
        pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
        return all(torch.equal(x, y) for x, y in pairs)

    plain, float8 = tiny_model(), float8_model()
    assert list(float8.state_dict()) == list(plain.state_dict())
    with torch.no_grad():
        for param in float8.parameters():
            param.mul_(0.5)
    assert not same_weights(plain, float8)
    plain.load_state_dict(float8.state_dict())  # strict: every key, every shape
    assert same_weights(plain, float8)
    fresh = tiny_model()
    float8.load_state_dict(fresh.state_dict())
    assert same_weights(fresh, float8)


def test_lora_keeps_its_adapters_and_its_frozen_base_runs_in_float8(torchao):
    from wmtp.parallel.float8 import Float8LoRALinear

    plain, float8 = tiny_model(lora=True), float8_model(lora=True)
    kinds = modules_of(float8)
    for block in BLOCKS:
        for name in FLOAT8_PER_BLOCK:
            assert kinds[f"{block}.{name}"] is Float8LoRALinear, name
        for name in KEPT_PER_BLOCK:
            assert kinds[f"{block}.{name}"] is LoRALinear, name
    assert kinds["output"] is nn.Linear
    assert list(float8.state_dict()) == list(plain.state_dict())
    assert list(lora_state_dict(float8)) == list(lora_state_dict(plain))  # what LoRA saves

    assert_close_steps(plain, float8)
    for name, param in float8.named_parameters():
        assert (param.grad is not None) == (".lora_" in name), name  # the frozen base gets none
    with torch.no_grad():
        unmerged = float8(tokens())
        merge_lora(float8)  # the adapters folded into the base, which alone runs (in float8)
        merged = float8(tokens())
    assert F.cosine_similarity(merged.flatten(), unmerged.flatten(), dim=0) > 0.98


@pytest.mark.parametrize(
    "scaling",
    [
        "tensorwise",
        pytest.param(
            "rowwise",
            marks=pytest.mark.skipif(
                not _cpu_scaled_mm_scales_rows(),
                reason=f"torch {torch.__version__}'s CPU _scaled_mm scales per tensor only",
            ),
        ),
    ],
)
def test_a_float8_step_is_close_to_the_plain_one(torchao, scaling):
    """A real float8 forward and backward (``_scaled_mm`` on the CPU): the loss within 2% of the
    plain model's on the same weights, every gradient finite and pointing the same way."""
    assert_close_steps(tiny_model(), float8_model(scaling))


def assert_close_steps(plain: LlamaMTP, float8: LlamaMTP) -> None:
    """One forward and backward of each on the same batch: the float8 loss differs (float8 ran)
    but within 2% (measured: 0.3% at most), and each gradient is finite and points the way of
    the plain one (cosine > 0.9; measured: 0.967 at least)."""
    batch = tokens()
    plain_loss, float8_loss = mtp_loss(plain, batch), mtp_loss(float8, batch)
    plain_loss.backward()
    float8_loss.backward()
    assert float8_loss.item() != plain_loss.item()
    assert float8_loss.item() == pytest.approx(plain_loss.item(), rel=0.02)
    for (name, a), b in zip(plain.named_parameters(), float8.parameters(), strict=True):
        if a.grad is None:
            assert b.grad is None, name
            continue
        assert torch.isfinite(b.grad).all(), name
        assert F.cosine_similarity(a.grad.flatten(), b.grad.flatten(), dim=0) > 0.9, name


class Float8Matmuls(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the matmuls of float8 tensors run under it (each becomes one ``_scaled_mm``)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torchao.float8 import Float8TrainingTensor

        float8 = any(isinstance(a, Float8TrainingTensor) for a in args)
        self.count += func.overloadpacket is torch.ops.aten.mm and float8
        return func(*args, **(kwargs or {}))


def test_a_frozen_base_pays_a_third_matmul_eager_and_compiling_drops_it(torchao):
    """What the field's docstring says: torchao's backward computes a frozen weight's gradient
    (discarded); a compiled graph leaves it out (a trained weight keeps it: the count is right)."""
    x = torch.randn(16, 64, requires_grad=True)
    with Float8Matmuls() as eager:
        lora_linear(frozen=True)(x).sum().backward()
    assert eager.count == 3  # output, input gradient, and the weight gradient nobody keeps
    # one graph each way (no graph break), and in it the matmuls
    assert compiled_matmuls(lora_linear(frozen=True), x) == {"forward": [1], "backward": [1]}
    assert compiled_matmuls(lora_linear(frozen=False), x) == {"forward": [1], "backward": [2]}


def lora_linear(*, frozen: bool) -> nn.Module:
    """One float8 LoRA linear (64 x 64, rank 4) in a container, its base weight frozen or not."""
    from wmtp.parallel.float8 import apply_float8

    torch.manual_seed(0)
    block = nn.Sequential(LoRALinear(nn.Linear(64, 64, bias=False), rank=4, alpha=8))
    block[0].weight.requires_grad_(not frozen)
    apply_float8([block], "tensorwise")
    return block


def compiled_matmuls(module: nn.Module, x: torch.Tensor) -> dict[str, list[int]]:
    """The ``_scaled_mm`` calls of each of ``module``'s compiled forward and backward graphs
    (AOTAutograd's, the graphs Inductor would get)."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    counts = {"forward": [], "backward": []}

    def counting(graph: str):
        def compiler(gm, example_inputs):
            nodes = gm.graph.nodes
            counts[graph].append(sum(n.target is torch.ops.aten._scaled_mm.default for n in nodes))
            return make_boxed_func(gm.forward)

        return compiler

    backend = aot_autograd(fw_compiler=counting("forward"), bw_compiler=counting("backward"))
    torch._dynamo.reset()
    try:
        torch.compile(module, backend=backend)(x).sum().backward()
    finally:
        torch._dynamo.reset()
    return counts


FSDP_WORKER = """
import sys
sys.path.insert(0, {repo!r})
import torch
from tests.parallel.test_float8 import float8_model, mtp_loss, tokens
from wmtp.parallel import init_distributed, teardown
from wmtp.parallel.fsdp import apply_fsdp

ctx = init_distributed("cpu")
model = float8_model(lora={lora})  # converted first, then sharded: parallelize's order
apply_fsdp(model, model.blocks(), ctx, param_dtype=torch.float32, reduce_dtype=torch.float32)
loss = mtp_loss(model, tokens()[ctx.rank : ctx.rank + 1])  # rank r: row r
loss.backward()
grads = {{n: p.grad.full_tensor() for n, p in model.named_parameters() if p.grad is not None}}
if ctx.rank == 0:
    torch.save(grads, {out!r})
teardown()
"""


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_float8_under_fsdp2_on_two_gloo_ranks_matches_one_process(torchao, tmp_path, lora):
    """FSDP2 shards the converted model and all-gathers each weight before its float8 linear
    runs: two ranks, one row each, give the gradients (summed over ranks) of one process that
    runs both rows through the same float8 model."""
    from tests.parallel.test_fsdp import launch

    out, script = tmp_path / "grads.pt", tmp_path / "worker.py"
    script.write_text(FSDP_WORKER.format(repo=str(REPO), lora=lora, out=str(out)))
    for proc in launch(2, [], script=script, timeout_s=60):
        output, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, output
    sharded = torch.load(out)

    model = float8_model(lora=lora)
    for row in range(2):
        mtp_loss(model, tokens()[row : row + 1]).backward()
    one = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert list(sharded) == list(one)
    for name, grad in one.items():
        torch.testing.assert_close(sharded[name], grad, rtol=1e-4, atol=1e-6, msg=name)
