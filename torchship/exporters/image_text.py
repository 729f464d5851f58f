"""Image-text models (CLIP, SigLIP, MetaCLIP 2): two towers exported as two graphs of one variant, each runnable alone.

``text`` takes token ids (and the attention mask, but for SigLIP, whose prompts are padded to their full length
without one as its model was trained) and gives ``text_embeds``; ``vision`` takes pixel values at the config's size and gives
``image_embeds``: the projected features of ``get_text_features`` / ``get_image_features``, not normalised. The
logit scale (and SigLIP's bias), the padding rule and the prompt template are kept in the manifest
(:class:`ZeroShotSettings`), so zero-shot scores are computed from the two embeddings without the model. The
two-graph export itself is :mod:`torchship.exporters.towers`. SigLIP 2 is not among them: its vision tower takes
patches with a pixel mask and their spatial shapes (NaFlex), another preprocessing and another graph.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from torchship.errors import InputError
from torchship.exporters.generic import config_int
from torchship.exporters.generic_media import PROCESSOR_FILES, image_size
from torchship.exporters.sources import TransformersSource
from torchship.exporters.spec import (BATCH, ENCODE_IMAGE, IMAGE_TEXT_EMBEDDING, SEQUENCE,
                                      ZERO_SHOT_IMAGE_CLASSIFICATION, FamilyGroup, ModelIO, NormalizedConfig,
                                      SpecDefaults, TensorSpec, register)

TEXT, VISION = "text", "vision"  # the graphs of an image-text variant
TOWER_FILES = {TEXT: "text_model.onnx", VISION: "vision_model.onnx"}
DEFAULT_TEMPLATE = "a photo of a {}."
# Where a checkpoint may name its prompt template; transformers has no standard field for it.
TEMPLATE_KEYS = ("prompt_template", "hypothesis_template", "template")
# transformers' zero-shot pipeline pads SigLIP's prompts to the length it was trained at (its tokenizer gives no mask).
MAX_LENGTH_PADDING = {"siglip": 64}
IMAGE_TEXT = FamilyGroup("image-text", "image-text models (CLIP, SigLIP)", "an image-text model", "torchship export")


@dataclass(frozen=True)
class ZeroShotSettings:
    """How two towers' embeddings become zero-shot scores, and how their prompts are tokenized: the manifest's
    ``text`` section of an image-text folder."""

    logit_scale: float  # the model's, before exp()
    logit_bias: float | None  # SigLIP's; None: softmax over labels (CLIP), else sigmoid per label
    template: str
    template_from: str  # "checkpoint" or "default"
    padding: str  # "longest" or "max_length"
    max_length: int

    @property
    def sigmoid(self) -> bool:
        return self.logit_bias is not None

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_json(cls, data: dict) -> "ZeroShotSettings":
        try:
            bias = data.get("logit_bias")
            return cls(float(data["logit_scale"]), None if bias is None else float(bias), str(data["template"]),
                       str(data.get("template_from", "default")), str(data.get("padding", "longest")),
                       int(data["max_length"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"the manifest's zero-shot settings are incomplete ({exc}); re-run torchship export") \
                from None


@dataclass(frozen=True)
class TowerCase:
    """``batch`` texts of ``sequence`` tokens (``lengths``: the real lengths of a padded batch) and ``batch``
    images at the model's size: one case serves both towers."""

    batch: int
    sequence: int
    lengths: tuple[int, ...] | None = None

    def label(self) -> str:
        return f"batch {self.batch} x {self.sequence}{' padded' if self.lengths else ''}"


def tower_of(io: ModelIO) -> str:
    """Which tower a graph's inputs feed."""
    return VISION if "pixel_values" in io.input_names else TEXT


def template_of(source: Path | None) -> tuple[str, str]:
    """(template, where from): the checkpoint's prompt template where its config names one, else the default."""
    for name in ("config.json", "processor_config.json"):
        path = Path(source) / name if source is not None else None
        if path is not None and path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            found = next((data[k] for k in TEMPLATE_KEYS if isinstance(data.get(k), str) and "{}" in data[k]), None)
            if found:
                return found, "checkpoint"
    return DEFAULT_TEMPLATE, "default"


def _features(out):
    """The projected features: transformers 5 returns them as the output's pooler_output, earlier ones a tensor."""
    return out if not hasattr(out, "pooler_output") else out.pooler_output


@dataclass(frozen=True)
class ImageTextSpec(TransformersSource, SpecDefaults):
    family: str = "image-text"
    model_types: tuple[str, ...] = ("clip", "siglip", "metaclip_2")
    group: FamilyGroup = IMAGE_TEXT
    tasks: tuple[str, ...] = (ZERO_SHOT_IMAGE_CLASSIFICATION, IMAGE_TEXT_EMBEDDING)
    default_exporter: str = "dynamo"
    fusion_hint: str = "an image-text model: optimize does not rewrite its two graphs yet"
    ort_model_type: str = ""
    atol: float = 1e-4
    dummy_case: TowerCase = TowerCase(2, 8)
    # Other batches and lengths than the dummy's, one text batch padded (its rows end at different tokens).
    validation_cases: tuple[TowerCase, ...] = (TowerCase(1, 5), TowerCase(3, 11, (11, 6, 3)))
    bench_inputs: str = "random token ids and Gaussian pixel values at the config's size, seeded"
    phases: tuple[str, ...] = (ENCODE_IMAGE,)
    precisions: tuple[str, ...] = ("fp32",)
    graphs: tuple[str, ...] = (TEXT, VISION)
    graph_files = TOWER_FILES

    def model_class(self, task: str):
        import transformers

        return transformers.AutoModel

    def default_task(self, config) -> str:
        return ZERO_SHOT_IMAGE_CLASSIFICATION

    def backend_problem(self, backend) -> str | None:
        if backend.runtime not in ("onnxruntime", "pytorch") or backend.precision != "fp32":
            return (f"{backend.name} cannot run an image-text folder (two graphs, text and vision) yet; use ort or "
                    "torch")
        return None

    def normalized(self, config) -> NormalizedConfig:
        text = config.text_config
        heads = config_int(text, "num_attention_heads")
        hidden = config_int(text, "hidden_size")
        return NormalizedConfig(hidden_size=hidden, num_heads=heads, num_kv_heads=heads,
                                num_layers=config_int(text, "num_hidden_layers"),
                                vocab_size=config_int(text, "vocab_size"),
                                max_positions=config_int(text, "max_position_embeddings"),
                                head_dim=hidden // heads if heads else 0)

    def max_positions(self, config) -> int:
        return config_int(config.text_config, "max_position_embeddings")

    def fusion_settings(self, model) -> dict:
        n = self.normalized(model.config)
        return {"num_heads": n.num_heads, "hidden_size": n.hidden_size, "num_layers": n.num_layers}

    def tower_io(self, model, tower: str) -> ModelIO:
        """One tower's inputs and outputs. The embedding width is probed (SigLIP's towers keep their hidden size,
        CLIP's project to projection_dim)."""
        from torchship._torch import run_named

        if tower == VISION:
            inputs = (TensorSpec("pixel_values", "float32", (BATCH, *image_size(model.config.vision_config))),)
            out = "image_embeds"
        else:
            inputs = (TensorSpec("input_ids", "int64", (BATCH, SEQUENCE)),
                      *((TensorSpec("attention_mask", "int64", (BATCH, SEQUENCE)),) if self.text_mask(model) else ()))
            out = "text_embeds"
        io = ModelIO(inputs, (TensorSpec(out, "float32", (BATCH, 0)),))
        probe = run_named(self.wrapper(model, io), self.sample_inputs(model.config, io, TowerCase(1, 4), seed=0),
                          io.input_names, io.output_names)
        return ModelIO(inputs, (TensorSpec(out, "float32", (BATCH, int(probe[out].shape[-1]))),))

    def text_mask(self, model) -> bool:
        """Whether the text graph takes the attention mask: not where prompts are padded to their full length (SigLIP:
        its tokenizer gives no mask, as its model was trained), as transformers' pipeline feeds them."""
        return model.config.model_type not in MAX_LENGTH_PADDING

    def io(self, model, task: str) -> ModelIO:
        """Both towers' inputs and outputs, as the manifest lists them (each graph lists its own)."""
        text, vision = (self.tower_io(model, t) for t in (TEXT, VISION))
        return ModelIO(text.inputs + vision.inputs, text.outputs + vision.outputs)

    def wrapper(self, model, io: ModelIO):
        """The tower ``io`` feeds, as a module with a positional forward, in eval mode."""
        import torch

        names = io.input_names
        if tower_of(io) == VISION:
            class Vision(torch.nn.Module):
                def __init__(self):
                    super().__init__()
                    self.model = model

                def forward(self, pixel_values):
                    return (_features(self.model.get_image_features(pixel_values=pixel_values, return_dict=True)),)
            return Vision().eval()

        class Text(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, *inputs):
                feeds = dict(zip(names, inputs))
                return (_features(self.model.get_text_features(**feeds, return_dict=True)),)
        return Text().eval()

    def sample_inputs(self, config, io: ModelIO, case: TowerCase, *, seed: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        if tower_of(io) == VISION:
            return {"pixel_values": rng.standard_normal((case.batch, *image_size(config.vision_config)))
                    .astype(np.float32)}
        text = config.text_config
        vocab = config_int(text, "vocab_size")
        pad, eos = getattr(text, "pad_token_id", None) or 0, getattr(text, "eos_token_id", None)
        ids = rng.integers(min(5, vocab - 1), vocab, (case.batch, case.sequence), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, length in enumerate(case.lengths or (case.sequence,) * case.batch):
            if isinstance(eos, int) and 0 <= eos < vocab:  # CLIP pools at the end-of-text token
                ids[row, length - 1] = eos
            ids[row, length:] = pad
            mask[row, :length] = 1
        return {name: {"input_ids": ids, "attention_mask": mask}[name] for name in io.input_names}

    def case_shape(self, case: TowerCase) -> tuple[int, ...]:
        return (case.batch, case.sequence)

    def case_for(self, sizes: dict[str, int], config) -> TowerCase:
        sequence = sizes.get(SEQUENCE, 8)
        if sequence > self.max_positions(config):
            raise InputError(f"{sequence} tokens are more than this model reads ({self.max_positions(config)})")
        return TowerCase(sizes[BATCH], sequence)

    def bench_sizes(self, config) -> list[dict[str, int]]:
        return [{BATCH: 1}, {BATCH: 8}]

    def compared_positions(self, feeds) -> dict:
        return {}

    def save_extras(self, source, folder) -> None:
        """The image processor: how pixel values are made from image files."""
        import shutil

        for name in PROCESSOR_FILES:
            if source is not None and (Path(source) / name).is_file():
                shutil.copyfile(Path(source) / name, Path(folder) / name)

    def manifest_text(self, model, source: Path | None) -> dict:
        """The manifest's ``text`` section: the zero-shot settings."""
        return self.zero_shot_settings(model, source).to_json()

    def zero_shot_settings(self, model, source: Path | None) -> ZeroShotSettings:
        """The logit scale and bias (values from the model), the prompt template and the padding rule."""
        bias = getattr(model, "logit_bias", None)
        template, where = template_of(source)
        model_type = model.config.model_type
        longest = self.max_positions(model.config)
        padded = MAX_LENGTH_PADDING.get(model_type)
        return ZeroShotSettings(logit_scale=float(model.logit_scale.detach().reshape(-1)[0]),
                                logit_bias=None if bias is None else float(bias.detach().reshape(-1)[0]),
                                template=template, template_from=where,
                                padding="max_length" if padded else "longest",
                                max_length=min(padded or longest, longest))

    def export_graphs(self, loaded, task: str, output: Path, opts, progress):
        """The two-graph export (torchship.exporters.towers)."""
        from torchship.exporters.towers import export_towers

        return export_towers(self, loaded, task, output, opts, progress)


IMAGE_TEXT_SPEC = register(ImageTextSpec())
