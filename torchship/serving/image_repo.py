"""Image-in Triton repositories: the model takes ``IMAGE`` (one encoded image file per batch row: PNG, JPEG, WebP, GIF,
the bytes as a client reads them from disk) and returns finished results, the decoding and the checkpoint's image
processor run inside the server by the same ``torchship.processing.image`` steps ``predict`` runs.

One layout: a single Python-backend model (``serving/backend.py``, step ``image``) decodes, preprocesses, runs the
variant with ONNX Runtime and reads the head, for the whole batch Triton forms. Outputs: classifiers ``LABEL``,
``SCORE``, ``SCORES`` (softmax, in the order of the folder's labels), as text classifiers; feature extractors
``EMBEDDING`` (the pooler output, else the first token's hidden state, not normalised: what transformers and
``predict`` give); both ``NOTES`` (one JSON list per image of what decoding said: an animated image's first frame,
an EXIF turn, transparency flattened). A row that is not an image, a truncated file, an image over the pixel limit
(Pillow's, or ``--max-image-pixels``) or an empty request is that request's error, one line; the other requests of
the batch are answered.

An image-text folder (CLIP, SigLIP: two graphs) is one Python model too (``steps.TwoTowers``): ``IMAGE`` or ``TEXT``
in, ``EMBEDDING`` of unit length out (one space); ``IMAGE`` with ``LABELS`` gives zero-shot ``SCORES`` and ``LABEL``.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

from torchship.errors import ArtifactError, InputError
from torchship.exporters.image_text import TEXT as TEXT_GRAPH, VISION as VISION_GRAPH
from torchship.exporters.spec import IMAGE_CLASSIFICATION, IMAGE_FEATURE_EXTRACTION
from torchship.serving.inventory import TENSORS, readme_path, write_readme
from torchship.serving.repository import (CLASSIFICATION, EMBEDDING, TEXT_QUEUE_DELAY_US, ServeOptions, _config,
                                          folder_task, max_batch_size, write_models, write_text_repo)
from torchship.serving.triton_repo import TritonOptions, default_variant, model_name, parse_config, pick_variant

PROCESSOR_FILE = "preprocessor_config.json"
# the folder's task -> the serving tasks it can give (first: the default)
IMAGE_FROM_FOLDER = {IMAGE_CLASSIFICATION: (CLASSIFICATION, TENSORS), IMAGE_FEATURE_EXTRACTION: (EMBEDDING, TENSORS)}
NOTES = ("NOTES", "TYPE_STRING", [1])
TOWERS = "image-text"  # an image-text model (CLIP, SigLIP): IMAGE or TEXT in, one space out; LABELS: zero-shot


def takes_images(folder: str | Path) -> bool:
    """Whether the folder's model reads pixel values (an image encoder's export)."""
    from torchship.artifact import Artifact

    return "pixel_values" in Artifact.open(folder).manifest.io().input_names


def write_repo(folder: str | Path, repo: str | Path, topts: TritonOptions = TritonOptions(),
               sopts: ServeOptions = ServeOptions(), *, default_delay: bool = False) -> list[Path]:
    """``torchship triton``: the image model for an image folder, else the text model (``write_text_repo``)."""
    if takes_images(folder):
        return write_image_repo(folder, repo, topts, sopts, default_delay=default_delay)
    if sopts.max_image_pixels is not None:
        raise InputError(f"--max-image-pixels is for image models; {folder} reads no images: drop it")
    return write_text_repo(folder, repo, topts, sopts, default_delay=default_delay)


def plan_image(folder: str | Path, topts: TritonOptions, sopts: ServeOptions) -> dict:
    """Everything an image model needs, checked before anything is written: {name, task, config, settings, files,
    marker}."""
    from torchship.artifact import Artifact
    from torchship.processing.image import ImageSettings

    topts, sopts = topts.checked(), sopts.checked()
    artifact = Artifact.open(folder)
    m = artifact.manifest
    if two_towers(artifact):
        if sopts.task not in (None, EMBEDDING):
            raise InputError(f"an image-text model is served with IMAGE or TEXT in and embeddings out (LABELS beside "
                             f"IMAGE: zero-shot scores); drop --task {sopts.task}")
        task = TOWERS
    else:
        task = folder_task(m, sopts.task, IMAGE_FROM_FOLDER, "with images in")
    name = model_name(folder, topts)
    if task == TENSORS:
        return {"name": name, "task": task}
    if sopts.runtime != "python" or sopts.resolved_layout != "single":
        raise InputError("an image model is served as one Python model (its images are decoded and preprocessed "
                         "beside ONNX Runtime in the server): pass --runtime python without --layout ensemble, or "
                         "serve the tensors with --task tensors")
    processor = artifact.folder / PROCESSOR_FILE
    try:
        image_settings = ImageSettings.from_config(json.loads(processor.read_text(encoding="utf-8")))
    except OSError:
        raise ArtifactError(f"{artifact.folder} has no {PROCESSOR_FILE}, which the server's preprocessing reads; "
                            f"export from a checkpoint that has its image processor saved in it") from None
    except ValueError as exc:
        raise ArtifactError(f"{processor}: {exc}") from None
    if topts.variant:
        pick, why = topts.variant, "named with --variant"
    elif artifact.auto_choice:
        pick, why = artifact.auto_choice, "chosen by torchship auto: the fastest within its accuracy budget"
    else:
        pick, why = default_variant(artifact)
    variant, record = pick_variant(artifact, pick)
    if variant is None or not record.serves("python"):
        raise InputError(f"--runtime python cannot run {pick!r} (a {record.runtime} {record.device} variant); pass "
                         f"an ONNX --variant (model, optimized, int8, ...)")
    if task == TOWERS:
        return _plan_towers(artifact, variant, record, why, name, image_settings, topts, sopts)
    max_batch = max_batch_size(m, topts, "an image model")
    outputs = {t.name: t for t in m.io().outputs}
    output = "logits" if task == CLASSIFICATION else next(
        (o for o in ("pooler_output", "last_hidden_state") if o in outputs), None)
    if output not in outputs:
        raise ArtifactError(f"{artifact.folder} has no {output or 'pooler_output'!r} output, which --task {task} reads")
    axes = outputs[output].axes[2:] if output == "last_hidden_state" else outputs[output].axes[1:]
    if not all(isinstance(a, int) for a in axes):
        raise ArtifactError(f"the width of {output!r} in {artifact.folder} is not fixed; it cannot be served")
    width = axes[-1] if output == "last_hidden_state" else int(math.prod(axes))
    labels = (m.text or {}).get("labels") or []
    settings = {"step": "image", "task": task, "output": output, "threads": sopts.threads,
                "instances": topts.instances, "labels": labels, "max_pixels": sopts.max_image_pixels,
                "processor": PROCESSOR_FILE, "model": "model.onnx", "preprocessing": image_settings.describe(),
                "disabled_optimizers": list(m.variants[variant].options.disabled_optimizers)}
    results = ([("LABEL", "TYPE_STRING", [1]), ("SCORE", "TYPE_FP32", [1]), ("SCORES", "TYPE_FP32", [width])]
               if task == CLASSIFICATION else [("EMBEDDING", "TYPE_FP32", [width])])
    config = _config(name, 'backend: "python"', max_batch, [("IMAGE", "TYPE_STRING", [1])], results + [NOTES], topts,
                     parameters={"torchship_source": str(artifact.folder.resolve()), "torchship_backend": record.name})
    parse_config(config)  # Triton's schema
    marker = {"source": str(artifact.folder.resolve()), "variant": record.name, "folder_variant": variant,
              "why": why, "task": task, "runtime": "python", "layout": "single", "entry": name, "inputs": ["IMAGE"]}
    return {"name": name, "task": task, "config": config, "settings": settings, "marker": marker,
            "files": {PROCESSOR_FILE: processor, "model.onnx": artifact.path_of(variant)}}


def write_image_repo(folder: str | Path, repo: str | Path, topts: TritonOptions = TritonOptions(),
                     sopts: ServeOptions = ServeOptions(), *, default_delay: bool = False) -> list[Path]:
    """Write the image model for ``folder`` into ``repo``; returns the model folder written (a list, as
    ``write_text_repo``). ``default_delay``: the queue delay was not given, use the text models' measured one."""
    from torchship.serving.triton_repo import check_repository, write_triton_repo

    repo = Path(repo)
    # images batch as texts do: the same measured queue delay (docs/serving.md) unless one is given
    plan = plan_image(folder, replace(topts, max_queue_delay_us=TEXT_QUEUE_DELAY_US) if default_delay else topts, sopts)
    check_repository(repo, plan["name"])
    readme_path(repo)  # where the README goes, or a refusal, before anything is written
    if plan["task"] == TENSORS:
        written = [write_triton_repo(folder, repo, replace(topts, name=plan["name"]))]
    else:
        model = {"config": plan["config"], "files": plan["files"], "settings": plan["settings"]}
        written = write_models(repo, {plan["name"]: plan["config"]}, {plan["name"]: model}, plan["marker"])
    write_readme(repo)
    return written


def two_towers(artifact) -> bool:
    """Whether the folder's variants are an image-text model's two graphs."""
    towers = {TEXT_GRAPH, VISION_GRAPH}
    return any({g.name for g in v.all_graphs} == towers for v in artifact.manifest.variants.values())


def _optional(name: str, dtype: str, dims) -> str:
    return (f'input {{\n  name: "{name}"\n  data_type: {dtype}\n  dims: [ {", ".join(map(str, dims))} ]\n'
            f'  optional: true\n}}\n')


def _plan_towers(artifact, variant, record, why, name, image_settings, topts, sopts) -> dict:
    """An image-text model: IMAGE (encoded files) or TEXT in, EMBEDDING (unit length, one space) out; IMAGE with
    LABELS (the labels in every row) gives SCORES over them and the best LABEL, as ``predict --labels`` does."""
    from torchship.runtimes.text import load_tokenizer

    m = artifact.manifest
    if not (artifact.folder / "tokenizer.json").is_file():
        raise ArtifactError(f"{artifact.folder} has no tokenizer.json, which the server's tokenizer reads")
    zero = m.text or {}
    if "logit_scale" not in zero or "template" not in zero:
        raise ArtifactError(f"{artifact.folder}'s manifest has no zero-shot settings; re-run torchship export")
    tokenizer = load_tokenizer(artifact)
    graphs = m.variants[variant]
    width = next(t for t in graphs.graph(VISION_GRAPH).outputs if t.name == "image_embeds").axes[-1]
    max_batch = max_batch_size(m, topts, "an image-text model")
    settings = {"step": "image-text", "task": TOWERS, "threads": sopts.threads, "instances": topts.instances,
                "max_pixels": sopts.max_image_pixels, "processor": PROCESSOR_FILE, "tokenizer": "tokenizer.json",
                "vision_model": "vision_model.onnx", "text_model": "text_model.onnx",
                "preprocessing": image_settings.describe(), "pad_id": int(tokenizer.pad_token_id or 0),
                **{k: zero.get(k) for k in ("logit_scale", "logit_bias", "template", "padding", "max_length")}}
    outputs = [("EMBEDDING", "TYPE_FP32", [width]), ("SCORES", "TYPE_FP32", [-1]), ("LABEL", "TYPE_STRING", [1]),
               NOTES]
    head = f"max_batch_size: {max_batch}\n"
    config = _config(name, 'backend: "python"', max_batch, [], outputs, topts,
                     parameters={"torchship_source": str(artifact.folder.resolve()), "torchship_backend": record.name})
    config = config.replace(head, head + _optional("IMAGE", "TYPE_STRING", [1]) + _optional("TEXT", "TYPE_STRING", [1])
                            + _optional("LABELS", "TYPE_STRING", [-1]), 1)
    parse_config(config)
    marker = {"source": str(artifact.folder.resolve()), "variant": record.name, "folder_variant": variant,
              "why": why, "task": TOWERS, "runtime": "python", "layout": "single", "entry": name,
              "inputs": ["IMAGE", "TEXT", "LABELS"]}
    files = {PROCESSOR_FILE: artifact.folder / PROCESSOR_FILE, "tokenizer.json": artifact.folder / "tokenizer.json",
             "vision_model.onnx": artifact.graph_path(variant, VISION_GRAPH),
             "text_model.onnx": artifact.graph_path(variant, TEXT_GRAPH)}
    return {"name": name, "task": TOWERS, "config": config, "settings": settings, "marker": marker, "files": files}
