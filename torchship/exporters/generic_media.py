"""Generic image and audio encoders: any transformers model no family spec names that reads ``pixel_values``
(ViT, DeiT, BEiT, DINOv2, ConvNeXt, ResNet, ...) or raw ``input_values`` through a wav2vec2-style convolutional
feature encoder (wav2vec2, HuBERT, WavLM, ...), exported with the dynamo exporter.

Images keep the config's size (``image_size``, ``num_channels``): the batch is the one dynamic axis. Some models
can interpolate their position embeddings to other sizes, most cannot, so the graph is fixed at the size the model
was trained at, as its image processor resizes to. Audio has a dynamic batch and length (``samples``); the outputs'
frame axis follows the length. The image processor or feature extractor travels with the export; the predictor
takes tensors (reading image and audio files is a later issue).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from torchship.errors import InputError
from torchship.exporters.generic import (GenericSource, bound, class_name, config_int, make_named_wrapper, mapping,
                                         probe_outputs, takes_first)
from torchship.exporters.spec import (AUDIO_CLASSIFICATION, BATCH, ENCODE_AUDIO, ENCODE_IMAGE, IMAGE_CLASSIFICATION,
                                      IMAGE_FEATURE_EXTRACTION, LABELLED_TASKS, SEQUENCE, SPEECH_RECOGNITION,
                                      FamilyGroup, ModelIO, NormalizedConfig, SpecDefaults, TensorSpec)

SAMPLES, FRAMES = "samples", "frames"
IMAGE_BATCHES = (1, 8, 32)  # what bench times and optimize's dispatch measures, at the model's size
DEFAULT_IMAGE_SIZE = 224  # what image processors resize to when a config names no size
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
IMAGES = FamilyGroup("image", "image encoders", "an image encoder", "torchship export")
AUDIO = FamilyGroup("audio", "audio encoders", "an audio encoder", "torchship export")


@dataclass(frozen=True)
class ImageShape:
    """A batch of images at the model's own size."""

    batch: int
    sequence: int = 0  # what benchmark rows report as the sequence axis: an image has none

    def label(self) -> str:
        return f"batch {self.batch} images"


@dataclass(frozen=True)
class AudioShape:
    """``batch`` waveforms padded to ``samples``; ``lengths`` are the real lengths (None: every row full)."""

    batch: int
    samples: int
    lengths: tuple[int, ...] | None = None

    @property
    def sequence(self) -> int:
        return self.samples

    def label(self) -> str:
        return f"batch {self.batch} x {self.samples} samples{' padded' if self.lengths else ''}"


def _head_problem(task: str, head: str, mapping_name: str, config) -> str | None:
    """Why the checkpoint cannot do ``task``: transformers has no such head for it, or the checkpoint lacks its
    weights (they would be random)."""
    model_type = getattr(config, "model_type", None)
    if model_type and not class_name(model_type, mapping_name):
        return f"transformers has no {head[3:]} head for {model_type!r} models; choose another --task"
    archs = [a for a in (getattr(config, "architectures", None) or ()) if a]
    if archs and not any(a.endswith(head) for a in archs):
        return (f"the checkpoint is a {archs[0]}, without the {head[3:]} head that {task} needs (its weights would "
                "be random); export a checkpoint trained for it")
    return None


class _MediaSpec(GenericSource, SpecDefaults):
    """What image and audio encoders share: Auto classes per task, outputs probed off the model, labels and the
    processor kept with the export."""

    default_exporter = "dynamo"
    fusion_hint = "a generic export: ONNX Runtime's transformer optimizer fuses only the model types it knows"
    text_api = None
    atol = 1e-4
    _classes: dict = {}  # task -> (Auto class, head suffix or None, auto mapping name)
    _outputs: dict = {}  # task -> the model outputs the graph ends in, those the model gives

    def for_model(self, model_type: str, config: dict):
        return bound(self, model_type)

    def model_class(self, task: str):
        import transformers

        return getattr(transformers, self._classes[task][0])

    def default_task(self, config) -> str:
        archs = getattr(config, "architectures", None) or ()
        for task, (_, head, _) in self._classes.items():
            if head and any(a.endswith(head) for a in archs):
                return task
        return self.tasks[0]

    def task_problem(self, task: str, config, folder) -> str | None:
        _, head, name = self._classes[task]
        return _head_problem(task, head, name, config) if head else None

    def wrapper(self, model, io: ModelIO):
        return make_named_wrapper(model, io.input_names, io.output_names)

    def save_extras(self, source, folder) -> None:
        """The image processor or feature extractor: how inputs are made from files."""
        for name in PROCESSOR_FILES:
            if source is not None and (Path(source) / name).is_file():
                shutil.copyfile(Path(source) / name, Path(folder) / name)

    def text_settings(self, folder, config, tokenizer, task: str) -> dict:
        id2label = getattr(config, "id2label", None)
        return {"labels": [id2label[i] for i in sorted(id2label)]} if task in LABELLED_TASKS and id2label else {}

    def normalized(self, config) -> NormalizedConfig:
        sizes = getattr(config, "hidden_sizes", None) or [0]
        hidden = config_int(config, "hidden_size", "embed_dim", default=int(sizes[-1] or 0))
        heads = config_int(config, "num_attention_heads")
        return NormalizedConfig(hidden_size=hidden, num_heads=heads, num_kv_heads=heads,
                                num_layers=config_int(config, "num_hidden_layers"), vocab_size=config_int(config, "vocab_size"),
                                head_dim=hidden // heads if heads else 0)

    def fusion_settings(self, model) -> dict:
        n = self.normalized(model.config)
        return {"num_heads": n.num_heads, "hidden_size": n.hidden_size, "num_layers": n.num_layers}

    def compared_positions(self, feeds) -> dict:
        return {}


def image_size(config) -> tuple[int, int, int]:
    """(channels, height, width) of the config's images."""
    size = getattr(config, "image_size", None) or DEFAULT_IMAGE_SIZE
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[-1]))
    return int(getattr(config, "num_channels", None) or 3), int(height), int(width)


@dataclass(frozen=True)
class GenericImageSpec(_MediaSpec):
    family: str = "generic-image"
    model_types: tuple[str, ...] = ()
    group: FamilyGroup = IMAGES
    tasks: tuple[str, ...] = (IMAGE_FEATURE_EXTRACTION, IMAGE_CLASSIFICATION)
    ort_model_type: str = ""
    phases: tuple[str, ...] = (ENCODE_IMAGE,)
    dummy_case: ImageShape = ImageShape(2)
    validation_cases: tuple[ImageShape, ...] = (ImageShape(1), ImageShape(3))
    bench_inputs: str = "Gaussian pixel values (normalized images) at the config's size, seeded"
    _classes = {IMAGE_FEATURE_EXTRACTION: ("AutoModel", None, ""),
                IMAGE_CLASSIFICATION: ("AutoModelForImageClassification", "ForImageClassification",
                                       "IMAGE_CLASSIFICATION")}
    _outputs = {IMAGE_FEATURE_EXTRACTION: ("last_hidden_state", "pooler_output"), IMAGE_CLASSIFICATION: ("logits",)}

    def claims(self, model_type: str, config: dict) -> bool:
        known = model_type in mapping("IMAGE_CLASSIFICATION") or model_type in mapping("IMAGE")
        return known and takes_first(model_type, config, "pixel_values")

    def io(self, model, task: str) -> ModelIO:
        channels, height, width = image_size(model.config)
        inputs = (TensorSpec("pixel_values", "float32", (BATCH, channels, height, width)),)
        io = ModelIO(inputs, ())
        feeds = tuple(self.sample_inputs(model.config, io, ImageShape(b), seed=0) for b in (1, 2))
        return ModelIO(inputs, probe_outputs(model, feeds, self._outputs[task], BATCH))

    def sample_inputs(self, config, io: ModelIO, case: ImageShape, *, seed: int):
        rng = np.random.default_rng(seed)
        return {"pixel_values": rng.standard_normal((case.batch, *image_size(config))).astype(np.float32)}

    def case_shape(self, case: ImageShape) -> tuple[int, ...]:
        return (case.batch,)

    def case_for(self, sizes: dict[str, int], config) -> ImageShape:
        if SEQUENCE in sizes:
            _, height, width = image_size(config)
            raise InputError(f"images have no sequence axis: this model takes {height}x{width} images; give batch "
                             "sizes only")
        return ImageShape(sizes[BATCH])

    def bench_sizes(self, config) -> list[dict[str, int]]:
        return [{BATCH: b} for b in IMAGE_BATCHES]


def receptive_field(config) -> int:
    """The fewest samples a wav2vec2-style feature encoder turns into one frame."""
    field, stride = 1, 1
    for kernel, step in zip(config.conv_kernel, config.conv_stride):
        field += (int(kernel) - 1) * stride
        stride *= int(step)
    return field


@dataclass(frozen=True)
class GenericAudioSpec(_MediaSpec):
    family: str = "generic-audio"
    model_types: tuple[str, ...] = ()
    group: FamilyGroup = AUDIO
    tasks: tuple[str, ...] = (SPEECH_RECOGNITION, AUDIO_CLASSIFICATION)
    ort_model_type: str = ""
    phases: tuple[str, ...] = (ENCODE_AUDIO,)
    # One second at 16 kHz, the rate of wav2vec2-style checkpoints' feature extractors; validation at other lengths,
    # one batch padded (zeros past each row's length, and the attention mask where the model reads one).
    dummy_case: AudioShape = AudioShape(2, 16000)
    validation_cases: tuple[AudioShape, ...] = (AudioShape(1, 12000), AudioShape(3, 20000, (20000, 11000, 6000)))
    bench_inputs: str = "Gaussian waveforms (scale 0.1), full length, seeded"
    _classes = {SPEECH_RECOGNITION: ("AutoModelForCTC", "ForCTC", "CTC"),
                AUDIO_CLASSIFICATION: ("AutoModelForAudioClassification", "ForSequenceClassification",
                                       "AUDIO_CLASSIFICATION")}
    _outputs = {SPEECH_RECOGNITION: ("logits",), AUDIO_CLASSIFICATION: ("logits",)}

    def claims(self, model_type: str, config: dict) -> bool:
        known = model_type in mapping("CTC") or model_type in mapping("AUDIO_CLASSIFICATION")
        return known and "conv_dim" in config and takes_first(model_type, config, "input_values")

    def io(self, model, task: str) -> ModelIO:
        import inspect

        # transformers' own rule (its feature extractors): a group-normed feature encoder is fed zero-padded audio
        # without a mask; a layer-normed one takes the attention mask.
        masked = ("attention_mask" in inspect.signature(model.forward).parameters
                  and getattr(model.config, "feat_extract_norm", "layer") == "layer")
        inputs = (TensorSpec("input_values", "float32", (BATCH, SAMPLES)),
                  *((TensorSpec("attention_mask", "int64", (BATCH, SAMPLES)),) if masked else ()))
        io = ModelIO(inputs, ())
        shortest = max(receptive_field(model.config) * 4, 400)
        feeds = tuple(self.sample_inputs(model.config, io, AudioShape(b, n), seed=0)
                      for b, n in ((1, shortest), (2, shortest * 2)))
        return ModelIO(inputs, probe_outputs(model, feeds, self._outputs[task], FRAMES))

    def sample_inputs(self, config, io: ModelIO, case: AudioShape, *, seed: int):
        rng = np.random.default_rng(seed)
        values = (0.1 * rng.standard_normal((case.batch, case.samples))).astype(np.float32)
        mask = np.zeros((case.batch, case.samples), dtype=np.int64)
        for row, length in enumerate(case.lengths or (case.samples,) * case.batch):
            values[row, length:] = 0.0
            mask[row, :length] = 1
        feeds = {"input_values": values, "attention_mask": mask}
        return {name: feeds[name] for name in io.input_names}

    def case_shape(self, case: AudioShape) -> tuple[int, ...]:
        return (case.batch, case.samples)

    def case_for(self, sizes: dict[str, int], config) -> AudioShape:
        samples = sizes.get(SAMPLES, sizes.get(SEQUENCE))
        if samples is None:
            raise InputError("give the audio length in samples (the samples axis)")
        if samples < receptive_field(config):
            raise InputError(f"{samples} samples are fewer than one frame of this model ({receptive_field(config)})")
        return AudioShape(sizes[BATCH], int(samples))

    def bench_sizes(self, config) -> list[dict[str, int]]:
        return [{BATCH: 1, SAMPLES: 16000}, {BATCH: 8, SAMPLES: 16000}]


GENERIC_IMAGE = GenericImageSpec()
GENERIC_AUDIO = GenericAudioSpec()
