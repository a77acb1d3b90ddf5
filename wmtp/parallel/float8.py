"""Float8 training of the transformer blocks' linear layers (``parallel.float8``), through torchao.

:func:`apply_float8` is the first step of :func:`wmtp.parallel.parallelize`: torchao swaps modules,
so the swap comes before activation checkpointing, ``torch.compile`` (which must trace the float8
modules) and FSDP2 (which shards their parameters). In every block (trunk and heads) each plain
``nn.Linear`` (wq wk wv wo w1 w2 w3) becomes torchao's ``Float8Linear``: input, weight and output
gradient are cast to float8 with dynamic scales, and the output, input-gradient and
weight-gradient matmuls run as ``torch._scaled_mm``. The weight stays the same ``Parameter``, under
the same name and dtype, so checkpoints load into a model with or without float8.

What stays in the compute dtype, and why:

- the embedding: a lookup, no matmul;
- the unembedding (``output``), as torchtitan and torchtune leave it: its logits feed the softmax
  and the loss, and wmtp's MTP loss reads ``output.weight`` in its chunked cross-entropy, so a
  swapped module would never run anyway;
- a linear whose sizes are not multiples of 16 (``_scaled_mm`` needs them);
- LoRA adapters: rank-r matmuls too small to pay for their casts.

LoRA: torchao's ``convert_to_float8_training`` takes every ``nn.Linear`` subclass, so it would
replace a ``LoRALinear`` by a plain ``Float8Linear`` and drop its adapters; its swap is therefore
limited to exact ``nn.Linear`` modules, and a ``LoRALinear`` becomes a :class:`Float8LoRALinear`
(same parameters), whose frozen base matmul is torchao's ``Float8Linear.forward``. With a frozen weight
torchao's forward and input gradient are right and the weight gets no gradient, but its backward
still computes the weight-gradient matmul, which autograd discards: eager, a frozen base pays
three float8 matmuls where two would do; compiled, the graph drops the third (a test counts them).

FSDP2: float8 compute composes with it as is: the all-gathered weight is cast in the forward (a
test shards a float8 model over two gloo ranks). torchao's float8 all-gather
(``enable_fsdp_float8_all_gather``: weights gathered in float8, half the bytes) is left off: it is
tensorwise only, it wants ``precompute_float8_dynamic_scale_for_fsdp`` after every optimizer step
(one all-reduce for every weight's scale instead of one each: a hook in the trainer's step), and
a one-GPU run gathers nothing.

torchao is optional (``pip install 'wmtp[float8]'``), imported only when a recipe asks for float8.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from wmtp.errors import ComponentError
from wmtp.models.lora import LoRALinear

log = logging.getLogger(__name__)

MIN_COMPUTE_CAPABILITY = (8, 9)
"""Float8 tensor cores: Ada (8.9, L40S) and Hopper (9.0, H100, H200) or newer."""
ALIGNMENT = 16
"""``torch._scaled_mm`` needs both sizes of a weight to be multiples of this."""
GPUS = "a CUDA GPU of compute capability 8.9 or newer (H100, H200, L40S)"


def why_not(device: torch.device) -> str | None:
    """Why float8 training cannot run on ``device`` (``None``: it can): no CUDA, an older GPU, or
    torchao missing."""
    if device.type != "cuda":
        return f"needs {GPUS}; this run is on {device.type}"
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_COMPUTE_CAPABILITY:
        name = torch.cuda.get_device_name(device)
        return f"needs {GPUS}; {name} is {capability[0]}.{capability[1]}"
    try:
        import torchao.float8  # noqa: F401
    except Exception as exc:  # missing, or built for another torch
        return f"needs torchao, which does not import here ({exc}): pip install 'wmtp[float8]'"
    return None


def check_float8(device: torch.device) -> None:
    """A ComponentError naming ``parallel.float8`` when float8 cannot run on ``device``."""
    why = why_not(device)
    if why is not None:
        raise ComponentError(
            f"parallel.float8 {why}. Train in the compute dtype: --set parallel.float8=false"
        )


def apply_float8(blocks: Sequence[nn.Module], scaling: str) -> int:
    """Put the linears of ``blocks`` whose sizes allow it in float8 with torchao's ``scaling``
    recipe (``tensorwise``, ``rowwise``), in place, names unchanged; returns how many.

    No device check here (:func:`check_float8` is the caller's): the conversion itself runs on
    any device, which is how the CPU tests exercise it."""
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    config = Float8LinearConfig.from_recipe_name(scaling)
    # a float8 linear of torchao's making: the settings every Float8LoRALinear shares
    settings = convert_to_float8_training(
        nn.Linear(ALIGNMENT, ALIGNMENT, bias=False, device="meta"), config=config
    )
    for block in blocks:
        convert_to_float8_training(block, config=config, module_filter_fn=_plain_and_aligned)
        for module in block.modules():
            if type(module) is LoRALinear and aligned(module):
                Float8LoRALinear.take_over(module, settings)
    converted, kept = _census(blocks)
    kept_note = f"; kept in the compute dtype: {', '.join(kept)}" if kept else ""
    log.info("float8 (%s scaling): %d block linears%s", scaling, converted, kept_note)
    return converted


def aligned(linear: nn.Linear) -> bool:
    """Both sizes of its weight are multiples of :data:`ALIGNMENT`."""
    return linear.in_features % ALIGNMENT == 0 and linear.out_features % ALIGNMENT == 0


def _plain_and_aligned(module: nn.Module, fqn: str) -> bool:
    """torchao's filter: an exact ``nn.Linear`` (a LoRALinear is a subclass) of usable sizes."""
    return type(module) is nn.Linear and aligned(module)


def _census(blocks: Sequence[nn.Module]) -> tuple[int, list[str]]:
    """How many linears of ``blocks`` run in float8, and the names (``wk``, ...) of the others."""
    from torchao.float8.float8_linear import Float8Linear

    converted, kept = 0, set()
    for block in blocks:
        for name, module in block.named_modules():
            if isinstance(module, (Float8Linear, Float8LoRALinear)):
                converted += 1
            elif isinstance(module, nn.Linear):
                kept.add(name.rsplit(".", 1)[-1])
    return converted, sorted(kept)


class Float8LoRALinear(LoRALinear):
    """A LoRA linear whose frozen base matmul runs in float8 (torchao's ``Float8Linear.forward``
    on this module's own weight); the adapters stay in the compute dtype. The same parameters
    under the same names as the ``LoRALinear`` it was: merging, saving and loading adapters
    work unchanged."""

    config: object
    """torchao's ``Float8LinearConfig``."""
    linear_mm_config: object
    """torchao's ``LinearMMConfig`` (how each of the three matmuls runs)."""

    @classmethod
    def take_over(cls, lora: LoRALinear, settings: nn.Module) -> None:
        """Make ``lora`` one of these in place, with the float8 settings of torchao's
        ``Float8Linear`` ``settings`` (its class changes, as FSDP2's ``fully_shard`` changes a
        module's; its parameters stay)."""
        lora.__class__ = cls
        lora.config, lora.linear_mm_config = settings.config, settings.linear_mm_config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torchao.float8.float8_linear import Float8Linear  # optional: imported when used

        return self.with_adapter(x, Float8Linear.forward(self, x))  # the base matmul in float8


__all__ = ["Float8LoRALinear", "aligned", "apply_float8", "check_float8", "why_not"]
