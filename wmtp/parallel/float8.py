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
A frozen base weight is cast to float8 once, after the model is on its device
(:func:`cast_frozen_bases`, one process, tensorwise scaling), not twice a step.

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


def cast_frozen_bases(blocks: Sequence[nn.Module]) -> int:
    """Cast each frozen float8 LoRA base weight of ``blocks`` to float8 once
    (:meth:`Float8LoRALinear.cast_frozen_weight`); returns how many. For a model whose weights
    are where they will train: on the device, in the compute dtype, not sharded."""
    cast = 0
    for block in blocks:
        for module in block.modules():
            if isinstance(module, Float8LoRALinear):
                cast += module.cast_frozen_weight()
    if cast:
        log.info("float8: %d frozen LoRA base weights cast to float8 once, kept beside them", cast)
    return cast


class Float8LoRALinear(LoRALinear):
    """A LoRA linear whose frozen base matmul runs in float8 (torchao's ``Float8Linear.forward``
    on this module's own weight); the adapters stay in the compute dtype. The same parameters
    under the same names as the ``LoRALinear`` it was: merging, saving and loading adapters
    work unchanged.

    A frozen weight never changes, so its float8 cast need not either: once
    :meth:`cast_frozen_weight` has run, the forward and the input gradient read that cast
    (:attr:`weight_float8`) instead of recasting the weight twice a step (an absolute-maximum
    pass and a cast over every base weight, forward and backward: at 7B about 60 GB of memory
    traffic per micro-batch). torchao's matmul takes an argument already in float8 as is
    (``matmul_with_hp_or_float8_args``), and a tensorwise cast of an unchanged weight is the one
    it would make, bit for bit. The cost is one byte per base weight element beside its bf16
    copy. Rowwise scaling casts the weight along another axis for the input gradient, so it keeps
    recasting; so does a sharded weight (FSDP2 gathers it each step)."""

    config: object
    """torchao's ``Float8LinearConfig``."""
    linear_mm_config: object
    """torchao's ``LinearMMConfig`` (how each of the three matmuls runs)."""
    weight_float8: tuple[torch.Tensor, torch.Tensor] | None = None
    """The frozen ``weight`` as torchao's ``Float8TrainingTensor`` (one tensorwise scale), for
    the output's product (``W^T``, column-major) and for the input gradient's (``W``,
    column-major); ``None``: the weight is cast at each use."""

    @classmethod
    def take_over(cls, lora: LoRALinear, settings: nn.Module) -> None:
        """Make ``lora`` one of these in place, with the float8 settings of torchao's
        ``Float8Linear`` ``settings`` (its class changes, as FSDP2's ``fully_shard`` changes a
        module's; its parameters stay)."""
        lora.__class__ = cls
        lora.config, lora.linear_mm_config = settings.config, settings.linear_mm_config

    def cast_frozen_weight(self) -> bool:
        """Keep the weight's float8 cast (:attr:`weight_float8`) if the weight is frozen, whole
        (not an FSDP2 shard) and the recipe scales it tensorwise, the same way for the output
        and the input gradient; returns whether it did."""
        from torch.distributed.tensor import DTensor
        from torchao.float8.config import ScalingGranularity, ScalingType

        weight, c = self.weight, self.config
        cast = c.cast_config_weight
        cacheable = (
            not weight.requires_grad
            and not isinstance(weight, DTensor)
            and cast.scaling_type is ScalingType.DYNAMIC
            and cast.scaling_granularity is ScalingGranularity.TENSORWISE
            and c.cast_config_weight_for_grad_input == cast
        )
        if not cacheable:
            self.weight_float8 = None
            return False
        with torch.no_grad():
            # the output's product reads W^T column-major (W's rows), the input gradient's W
            # column-major (W^T's rows): one copy in each layout, so no step transposes them
            for_output = self._float8(weight.t())
            for_input_grad = self._float8(weight.t().contiguous()).t()
        self.weight_float8 = (for_output, for_input_grad)
        return True

    def _float8(self, hp: torch.Tensor) -> torch.Tensor:
        from torchao.float8.float8_scaling_utils import hp_tensor_to_float8_dynamic
        from torchao.float8.float8_training_tensor import GemmInputRole

        c = self.config
        return hp_tensor_to_float8_dynamic(
            hp,
            c.cast_config_weight.target_dtype,
            self.linear_mm_config,
            gemm_input_role=GemmInputRole.WEIGHT,
            scaling_granularity=c.cast_config_weight.scaling_granularity,
            round_scales_to_power_of_2=c.round_scales_to_power_of_2,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight_float8 is None:
            from torchao.float8.float8_linear import Float8Linear  # optional: imported when used

            return self.with_adapter(x, Float8Linear.forward(self, x))  # the base matmul in float8
        x_in = x.to(torch.get_autocast_gpu_dtype()) if torch.is_autocast_enabled() else x
        for_output, for_input_grad = self.weight_float8
        base = _FrozenFloat8Matmul.apply(
            x_in, for_output, for_input_grad, self.linear_mm_config, self.config
        )
        return self.with_adapter(x, base)

    def merge(self) -> None:
        super().merge()
        self._recast()

    def unmerge(self) -> None:
        super().unmerge()
        self._recast()

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # nn.Module's, for each module
        super()._load_from_state_dict(*args, **kwargs)
        self._recast()

    def _recast(self) -> None:
        """The weight changed (merged or unmerged adapters, a state dict loaded into it): its
        kept cast follows it."""
        if self.weight_float8 is not None:
            self.cast_frozen_weight()


class _FrozenFloat8Matmul(torch.autograd.Function):
    """``x @ W^T`` for a frozen ``W`` kept in float8 in both layouts: torchao's float8 matmul
    (``matmul_with_hp_or_float8_args``) with its weight arguments already cast, and no weight
    gradient (nothing saves ``x`` for one)."""

    @staticmethod
    def forward(ctx, x, for_output, for_input_grad, linear_mm_config, config):
        ctx.save_for_backward(for_input_grad)
        ctx.linear_mm_config, ctx.config = linear_mm_config, config
        x8 = _cast(x.reshape(-1, x.shape[-1]), config, "input", linear_mm_config)
        out = torch.mm(x8, for_output)
        return out.reshape(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad_out):
        (for_input_grad,) = ctx.saved_tensors
        c = ctx.config
        g = grad_out.reshape(-1, grad_out.shape[-1])
        g8 = _cast(g, c, "grad_output", ctx.linear_mm_config)
        grad_in = torch.mm(g8, for_input_grad)
        return grad_in.reshape(*grad_out.shape[:-1], grad_in.shape[-1]), None, None, None, None


def _cast(hp: torch.Tensor, config, role: str, linear_mm_config) -> torch.Tensor:
    """torchao's dynamic cast of an activation (``role`` ``input``) or an output gradient
    (``grad_output``) as its float8 matmul makes it, by ``config``'s settings for that role."""
    from torchao.float8.float8_scaling_utils import hp_tensor_to_float8_dynamic
    from torchao.float8.float8_training_tensor import GemmInputRole

    cast = getattr(config, f"cast_config_{role}")
    return hp_tensor_to_float8_dynamic(
        hp,
        cast.target_dtype,
        linear_mm_config,
        gemm_input_role=getattr(GemmInputRole, role.upper()),
        scaling_granularity=cast.scaling_granularity,
        round_scales_to_power_of_2=config.round_scales_to_power_of_2,
    )


__all__ = [
    "Float8LoRALinear",
    "aligned",
    "apply_float8",
    "cast_frozen_bases",
    "check_float8",
    "why_not",
]
