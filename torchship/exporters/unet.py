"""Diffusion UNets (diffusers ``UNet2DConditionModel``): noisy latents, timestep and text states in,
predicted noise out.

Inputs follow the names diffusers uses: ``sample`` (batch, in_channels, height, width),
``timestep`` (one value for the whole batch, or one per sample) and ``encoder_hidden_states``
(batch, text tokens, cross-attention width); the output is ``out_sample`` (ONNX cannot give an
output an input's name; ONNX Runtime's and Optimum's diffusion pipelines use the same name).
diffusers is an optional extra, imported only when a UNet is exported or run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from torchship.errors import InputError, UnsupportedModelError
from torchship.exporters.sources import DiffusersSource
from torchship.exporters.spec import (BATCH, DENOISE, DENOISING, SEQUENCE, FamilyGroup, ModelIO, NormalizedConfig,
                                      SpecDefaults, TensorSpec, register)

UNETS = FamilyGroup("unet", "diffusion UNets", "a diffusion UNet", "export-unet",
                    "Export a diffusers UNet2DConditionModel (Stable Diffusion, inpainting) to ONNX, validated and "
                    "optimized. Weights over 1 GiB go to model.onnx.data beside the graph. Needs torchship[diffusers].",
                    example="./sd2-inpainting")

HEIGHT, WIDTH, STEPS = "height", "width", "steps"
# Conditioning inputs that SDXL-style and other UNets add; torchship exports the text-conditioned UNet.
_UNSUPPORTED = ("class_embed_type", "addition_embed_type", "time_cond_proj_dim", "encoder_hid_dim_type")


@dataclass(frozen=True)
class UNetShape:
    """``batch`` latents of ``height`` x ``width`` with ``sequence`` text tokens; ``steps`` timestep
    values (1: one for the whole batch, or one per sample)."""

    batch: int
    height: int
    width: int
    sequence: int
    steps: int = 1

    def label(self) -> str:
        per = "" if self.steps == 1 else ", a timestep per sample"
        return f"batch {self.batch} x {self.height}x{self.width} latents x {self.sequence} tokens{per}"


def _cfg(config, key, default=None):
    return config.get(key, default) if isinstance(config, dict) else getattr(config, key, default)


def spatial_multiple(config) -> int:
    """Latent sizes must be multiples of this: the UNet halves them once per down block but the last.
    (diffusers falls back to resizing otherwise, a Python branch that tracing would bake in.)"""
    return 2 ** max(len(_cfg(config, "down_block_types", ()) or ()) - 1, 0)


def make_unet_inputs(io: ModelIO, case: UNetShape, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Gaussian latents and text states as a pipeline feeds them, timesteps spread over 0..999."""
    rng = np.random.default_rng(seed)
    channels = next(t for t in io.inputs if t.name == "sample").axes[1]
    width = next(t for t in io.inputs if t.name == "encoder_hidden_states").axes[2]
    feeds = {
        "sample": rng.standard_normal((case.batch, channels, case.height, case.width)).astype(np.float32),
        "timestep": rng.integers(0, 1000, size=(case.steps,)).astype(np.float32),
        "encoder_hidden_states": rng.standard_normal((case.batch, case.sequence, width)).astype(np.float32),
    }
    return {name: feeds[name] for name in io.input_names}


@dataclass(frozen=True)
class UNetSpec(SpecDefaults, DiffusersSource):
    family: str
    model_types: tuple[str, ...]
    diffusers_class: str
    ort_model_type: str = "unet"
    # Deep convolutional nets accumulate float error; 1e-3 of outputs of unit scale (the noise).
    atol: float = 1e-3
    group: FamilyGroup = UNETS
    phases: tuple[str, ...] = (DENOISE,)
    # Measured on Stable Diffusion 2's UNet: the dynamo export at opset 23 carries ONNX Attention in
    # every attention layer and ORT's unet optimizer runs on it; on the TorchScript export that
    # optimizer fails (it cannot read the head count from the traced reshapes).
    default_exporter: str = "dynamo"
    fusion_hint: str = "Export with --exporter dynamo (the default for UNets): it carries ONNX Attention ops"
    tasks: tuple[str, ...] = (DENOISING,)
    # Sizes are multiples of 32, so they fit UNets with up to six down blocks. The export traces at
    # batch 2 with a timestep per sample; validation runs at other sizes, one of them a batch of 3
    # sharing one timestep (broadcast, as pipelines call it).
    dummy_case: UNetShape = UNetShape(2, 64, 32, 11, 2)
    validation_cases: tuple[UNetShape, ...] = (UNetShape(1, 32, 32, 7, 1), UNetShape(3, 32, 64, 13, 1))
    bench_inputs: str = "Gaussian latents and text states, timesteps in 0..999, seeded"

    def default_task(self, config) -> str:
        return DENOISING

    def normalized(self, config) -> NormalizedConfig:
        return NormalizedConfig(hidden_size=int(_cfg(config, "cross_attention_dim", 0) or 0),
                                num_layers=len(_cfg(config, "down_block_types", ()) or ()))

    def io(self, model, task: str) -> ModelIO:
        if task != DENOISING:
            raise UnsupportedModelError(f"{self.family} models export {DENOISING}, not {task!r}")
        config = model.config
        for key in _UNSUPPORTED:
            if _cfg(config, key) is not None:
                raise UnsupportedModelError(
                    f"this UNet sets {key}={_cfg(config, key)!r} and needs extra conditioning inputs (as SDXL "
                    "does); torchship exports text-conditioned UNets (Stable Diffusion 1.x/2.x, inpainting)")
        cross = _cfg(config, "cross_attention_dim")
        if not isinstance(cross, int):
            raise UnsupportedModelError(f"this UNet has per-block cross_attention_dim {cross!r}; torchship exports "
                                        "UNets with one text-state width")
        inputs = (TensorSpec("sample", "float32", (BATCH, int(_cfg(config, "in_channels")), HEIGHT, WIDTH)),
                  TensorSpec("timestep", "float32", (STEPS,)),
                  TensorSpec("encoder_hidden_states", "float32", (BATCH, SEQUENCE, cross)))
        outputs = (TensorSpec("out_sample", "float32", (BATCH, int(_cfg(config, "out_channels")), HEIGHT, WIDTH)),)
        return ModelIO(inputs, outputs)

    def wrapper(self, model, io: ModelIO):
        from torchship._torch import make_unet_wrapper

        return make_unet_wrapper(model)

    def sample_inputs(self, config, io: ModelIO, case: UNetShape, *, seed: int):
        return make_unet_inputs(io, case, seed=seed)

    def case_shape(self, case: UNetShape) -> tuple[int, ...]:
        return (case.batch, case.height, case.width, case.sequence, case.steps)

    def case_for(self, sizes: dict[str, int], config) -> UNetShape:
        case = UNetShape(sizes[BATCH], sizes[HEIGHT], sizes[WIDTH], sizes[SEQUENCE], sizes[STEPS])
        multiple = spatial_multiple(config)
        for axis, size in ((HEIGHT, case.height), (WIDTH, case.width)):
            if size % multiple:
                raise InputError(f"latent {axis} {size} is not a multiple of {multiple}, which this UNet needs "
                                 f"({len(_cfg(config, 'down_block_types'))} down blocks); use e.g. "
                                 f"{max(multiple, size // multiple * multiple)}")
        if case.steps not in (1, case.batch):
            raise InputError(f"timestep has {case.steps} values for batch {case.batch}; give 1 (the same step for "
                             "the whole batch) or one per sample")
        return case

    def bench_sizes(self, config) -> list[dict[str, int]]:
        """A pipeline's denoising step: batch 1 at the model's native latent size, 77 text tokens."""
        size = _cfg(config, "sample_size", 64)
        size = size if isinstance(size, int) and size > 0 else 64
        return [{BATCH: 1, HEIGHT: size, WIDTH: size, SEQUENCE: 77, STEPS: 1}]

    def compared_positions(self, feeds) -> dict:
        return {}

    def fusion_settings(self, model) -> dict:
        """ORT's UNet optimizer finds heads and widths itself; one attention per attention module."""
        attention = sum(1 for m in model.modules() if type(m).__name__ == "Attention")
        return {"num_heads": 0, "hidden_size": 0, "num_layers": attention}


UNET_SPECS = (register(UNetSpec("unet", ("UNet2DConditionModel",), "UNet2DConditionModel")),)
