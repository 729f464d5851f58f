"""Text-in Triton repositories: the model takes ``TEXT`` (one string per batch row) and returns finished
results, with the tokenizer and the post-processing inside the server.

Two layouts, one contract (inputs, outputs, errors):

- ``single`` (``--runtime python``'s default): one Python-backend model runs tokenize -> ONNX Runtime ->
  post-process in one process, in groups of texts of similar length. It serves on any tritonserver with
  the Python backend, the ``torchship serve`` one included.
- ``ensemble``: ``NAME`` schedules ``NAME_tokenize`` (Python) -> ``NAME_model`` (the chosen runtime: Triton's
  onnxruntime, TensorRT or OpenVINO backend, or Python) -> ``NAME_post`` (Python). Native runtimes need
  NVIDIA's container image, whose server has those backends.

Outputs by task: ``embedding`` -> ``EMBEDDING`` [dim] (the model's sentence-transformers pooling and
normalisation, else mean); ``classification`` -> ``LABEL``, ``SCORE``, ``SCORES``; ``hidden-states`` ->
``HIDDEN_STATES`` [tokens, hidden]; ``entities`` -> ``ENTITIES`` (one JSON list per text, grouped as
``--aggregation`` says); ``fill-mask`` -> ``MASKS`` (one JSON list per text: per mask, the top candidates); each
of these -> ``TOKENS`` (kept) and ``TRUNCATED`` (dropped) per text. ``question-answering`` takes ``QUESTION``
and ``TEXT`` (the context, read in overlapping windows when long) and returns ``ANSWER``, ``SCORE``, ``START``,
``END`` (character offsets in the context) and ``WINDOWS``. The three JSON-and-span tasks are served in the
``single`` layout: their post-processing needs the text and its tokens, which stay in one process.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from torchship.errors import ArtifactError, InputError
from torchship.serving.inventory import TENSORS, mark, readme_path, write_readme
from torchship.exporters.spec import (FEATURE_EXTRACTION, FILL_MASK, QUESTION_ANSWERING, SENTENCE_EMBEDDING,
                                      TEXT_CLASSIFICATION, TOKEN_CLASSIFICATION)
from torchship.serving.triton_repo import (MARKER, TritonOptions, default_variant, model_name, parse_config,
                                          pick_variant)

EMBEDDING, HIDDEN_STATES, CLASSIFICATION = "embedding", "hidden-states", "classification"
ENTITIES, MASKS, ANSWERS = "entities", "fill-mask", "question-answering"
SERVE_TASKS = (EMBEDDING, CLASSIFICATION, HIDDEN_STATES, ENTITIES, MASKS, ANSWERS, TENSORS)
SINGLE_ONLY = (ENTITIES, MASKS, ANSWERS)  # their post-processing reads the text and its tokens
RUNTIMES = ("python", "onnxruntime", "tensorrt", "openvino")
LAYOUTS = ("single", "ensemble")
# the folder's task -> the serving tasks it can give (first: the default)
FROM_FOLDER = {FEATURE_EXTRACTION: (EMBEDDING, HIDDEN_STATES, TENSORS), SENTENCE_EMBEDDING: (EMBEDDING, TENSORS),
               TEXT_CLASSIFICATION: (CLASSIFICATION, TENSORS), TOKEN_CLASSIFICATION: (ENTITIES, TENSORS),
               FILL_MASK: (MASKS, TENSORS), QUESTION_ANSWERING: (ANSWERS, TENSORS)}
# what a task's model output is, when not the hidden states
MODEL_OUTPUT = {CLASSIFICATION: "logits", ENTITIES: "logits", MASKS: "logits", ANSWERS: "start_logits"}
STEPS_FILE = Path(__file__).with_name("steps.py")
PROCESSING_DIR = Path(__file__).parents[1] / "processing"  # predict's pre- and post-processing, numpy only
NATIVE_DEFAULT = {"tensorrt": "tensorrt", "openvino": "openvino"}
# Triton's dynamic-batching window for text models, measured on the packaged MiniLM (docs/serving.md)
TEXT_QUEUE_DELAY_US = 1000
BACKEND_FILE = Path(__file__).with_name("backend.py")


def carried_files() -> dict[str, Path]:
    """{path in a Python model's version folder: its source in torchship}: the model, its steps and the whole
    processing package, the same in every Python model (they import nothing of torchship: a test checks it)."""
    return {"model.py": BACKEND_FILE, "torchship_steps.py": STEPS_FILE,
            **{f"torchship_processing/{p.name}": p for p in sorted(PROCESSING_DIR.glob("*.py"))}}


@dataclass(frozen=True)
class ServeOptions:
    task: str | None = None  # None: the folder's own (embedding for encoders, classification for classifiers)
    runtime: str = "python"
    layout: str | None = None  # None: single for python, ensemble for the native runtimes
    strict: bool = False  # a text over the model's maximum length is an error, not truncated
    aggregation: str = "simple"  # how an entities model groups its tokens (as transformers' pipeline)
    threads: int | None = None  # ONNX Runtime threads per instance; None: the server's cores / instances
    max_image_pixels: int | None = None  # image models: refuse larger images (None: Pillow's own limit)

    def checked(self) -> "ServeOptions":
        if self.task is not None and self.task not in SERVE_TASKS:
            raise InputError(f"unknown --task {self.task!r}; use one of {', '.join(SERVE_TASKS)}")
        if self.runtime not in RUNTIMES:
            raise InputError(f"unknown --runtime {self.runtime!r}; use one of {', '.join(RUNTIMES)}")
        if self.layout is not None and self.layout not in LAYOUTS:
            raise InputError(f"unknown --layout {self.layout!r}; use {' or '.join(LAYOUTS)}")
        if self.layout == "single" and self.runtime != "python":
            raise InputError(f"--layout single runs the model inside the Python backend; with --runtime "
                             f"{self.runtime} the model step is its own model: use --layout ensemble")
        from torchship.processing.entities import STRATEGIES

        if self.aggregation not in STRATEGIES:
            raise InputError(f"unknown --aggregation {self.aggregation!r}; use one of {', '.join(STRATEGIES)}")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"--threads must be 1 or more, got {self.threads}")
        if self.max_image_pixels is not None and self.max_image_pixels < 1:
            raise InputError(f"--max-image-pixels must be 1 or more, got {self.max_image_pixels}")
        return self

    @property
    def resolved_layout(self) -> str:
        return self.layout or ("single" if self.runtime == "python" else "ensemble")


@dataclass
class Plan:
    """Everything a text repository needs, checked before anything is written."""

    name: str
    task: str
    folder: Path  # the torchship folder
    variant: str  # the folder variant the model step runs
    backend: str  # its backend's name
    why: str
    model_file: Path | None  # the ONNX file the Python backend runs (None when a native step runs it)
    output: str  # the model output the post-processing reads
    dims: dict  # EMBEDDING / HIDDEN_STATES / SCORES dims
    max_batch_size: int
    settings: dict  # serving.json's common part


def folder_task(manifest, wanted: str | None, table: dict | None = None, served: str = "as text") -> str:
    """The serving task of a folder: ``wanted`` if its task allows it (``table``: folder task -> serving tasks,
    the first the default), else one line that says what it can be served as."""
    allowed = (FROM_FOLDER if table is None else table).get(manifest.task)
    if allowed is None:
        if wanted in (None, TENSORS):
            return TENSORS
        raise InputError(f"serving {manifest.task} models {served} is not supported yet; serve the tensors with "
                         f"--task tensors, and run the task's post-processing in the client (torchship predict "
                         f"shows it)")
    task = wanted or allowed[0]
    if task not in allowed:
        raise InputError(f"a {manifest.task} model cannot be served as --task {task}; it can be: "
                         f"{', '.join(allowed)}")
    return task


def max_batch_size(manifest, topts: TritonOptions, what: str) -> int:
    """The served model's max batch: --max-batch-size, else the shape config's largest batch, else 8."""
    max_batch = topts.max_batch_size
    if max_batch is None:
        resolved = manifest.resolved_shapes()
        max_batch = resolved.axes["batch"][2] if resolved is not None and "batch" in resolved.axes else 8
    if max_batch < 1:
        raise InputError(f"{what} batches its rows: --max-batch-size must be 1 or more")
    return max_batch


def plan_text(folder: str | Path, topts: TritonOptions, sopts: ServeOptions) -> Plan:
    from torchship.artifact import Artifact

    topts, sopts = topts.checked(), sopts.checked()
    artifact = Artifact.open(folder)  # an export folder, or an auto output (its model/ and auto's choice)
    chosen = artifact.auto_choice
    m = artifact.manifest
    task = folder_task(m, sopts.task)
    if task in SINGLE_ONLY and sopts.resolved_layout != "single":
        raise InputError(f"a {task} model is served as one Python model (its post-processing needs the text and its "
                         f"tokens in one process): drop --layout ensemble and pass --runtime python")
    name = model_name(folder, topts)
    if not (artifact.folder / "tokenizer.json").is_file():
        raise ArtifactError(f"{artifact.folder} has no tokenizer.json, which the server's tokenizer reads; export "
                            f"from a checkpoint with a fast (Rust) tokenizer, or save one there")
    if topts.variant:
        pick, why = topts.variant, "named with --variant"
    elif sopts.runtime in NATIVE_DEFAULT:
        pick, why = NATIVE_DEFAULT[sopts.runtime], f"the {sopts.runtime} variant"
    elif chosen:
        pick, why = chosen, "chosen by torchship auto: the fastest within its accuracy budget"
    else:
        pick, why = default_variant(artifact)
    variant, record = pick_variant(artifact, pick)
    if not record.serves(sopts.runtime):  # the backend table says which serving layouts run it
        raise InputError(f"--runtime {sopts.runtime} cannot run {pick!r} (a {record.runtime} {record.device} "
                         f"variant); pass a --variant it runs, or --runtime {record.serving[0]}"
                         if record.serving else f"{pick!r} cannot be served: no serving layout runs it")
    max_batch = max_batch_size(m, topts, "a text model")
    outputs = {t.name: t for t in m.io().outputs}
    output = "sentence_embedding" if "sentence_embedding" in outputs else MODEL_OUTPUT.get(task, "last_hidden_state")
    if output not in outputs:
        raise ArtifactError(f"{artifact.folder} has no {output!r} output, which --task {task} reads")
    width = 0 if task == ANSWERS else outputs[output].axes[-1]  # start and end logits: one per token
    if not isinstance(width, int):
        raise ArtifactError(f"the width of {output!r} in {artifact.folder} is not fixed; it cannot be served")
    text = m.text or {}
    settings = {"task": task, "max_length": int(text.get("max_length") or 512), "strict": sopts.strict,
                "inputs": list(m.input_names), "output": output, "threads": sopts.threads,
                "instances": topts.instances, "labels": text.get("labels") or [],
                "pooling": None if output == "sentence_embedding" else text.get("pooling", "mean"),
                "normalize": False if output == "sentence_embedding" else bool(text.get("normalize")),
                "pad_id": _pad_id(artifact.folder), **_task_settings(artifact, task, sopts)}
    dims = {"EMBEDDING": [width], "HIDDEN_STATES": [-1, width], "SCORES": [width]}
    model_file = artifact.path_of(variant) if sopts.runtime == "python" else None
    if model_file is not None:  # ORT graph transformers the variant was measured without (SkipLayerNormFusion)
        settings["disabled_optimizers"] = list(m.variants[variant].options.disabled_optimizers)
    return Plan(name, task, artifact.folder.resolve(), variant or record.name, record.name, why, model_file, output,
                dims, max_batch, settings)


def _task_settings(artifact, task: str, sopts: ServeOptions) -> dict:
    """What a task's post-processing needs of the tokenizer, read once here (the server has only
    ``tokenizers``): the mask token, the unknown token, whether decoding cleans up spaces."""
    if task not in SINGLE_ONLY:
        return {}
    from torchship.processing.fill_mask import cleans_up
    from torchship.runtimes.text import load_tokenizer

    tok = load_tokenizer(artifact)
    if task == ENTITIES:
        return {"aggregation": sopts.aggregation, "unk_id": tok.unk_token_id}
    if task == MASKS:
        if tok.mask_token_id is None:
            raise ArtifactError(f"the tokenizer in {artifact.folder} has no mask token, which fill-mask needs")
        return {"mask_token": tok.mask_token, "mask_id": int(tok.mask_token_id), "clean_up_spaces": cleans_up(tok),
                "pad_token_id": tok.pad_token_id}
    return {"special_pair": tok.num_special_tokens_to_add(pair=True)}


def _pad_id(folder: Path) -> int:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return 0
    return int(config.get("pad_token_id") or 0)


def _tensor(key: str, name: str, dtype: str, dims) -> str:
    return f'{key} {{\n  name: "{name}"\n  data_type: {dtype}\n  dims: [ {", ".join(map(str, dims))} ]\n}}'


def _outputs(plan: Plan) -> list[tuple[str, str, list]]:
    if plan.task == ANSWERS:
        return [("ANSWER", "TYPE_STRING", [1]), ("SCORE", "TYPE_FP32", [1]), ("START", "TYPE_INT32", [1]),
                ("END", "TYPE_INT32", [1]), ("WINDOWS", "TYPE_INT32", [1])]
    by_task = {EMBEDDING: [("EMBEDDING", "TYPE_FP32", plan.dims["EMBEDDING"])],
               HIDDEN_STATES: [("HIDDEN_STATES", "TYPE_FP32", plan.dims["HIDDEN_STATES"])],
               CLASSIFICATION: [("LABEL", "TYPE_STRING", [1]), ("SCORE", "TYPE_FP32", [1]),
                                ("SCORES", "TYPE_FP32", plan.dims["SCORES"])],
               ENTITIES: [("ENTITIES", "TYPE_STRING", [1])], MASKS: [("MASKS", "TYPE_STRING", [1])]}
    return by_task[plan.task] + [("TOKENS", "TYPE_INT32", [1]), ("TRUNCATED", "TYPE_INT32", [1])]


def _inputs(plan: Plan) -> list[tuple[str, str, list]]:
    text = [("TEXT", "TYPE_STRING", [1])]
    return [("QUESTION", "TYPE_STRING", [1])] + text if plan.task == ANSWERS else text


def _config(name: str, head: str, max_batch: int, inputs, outputs, topts: TritonOptions, *, batching=True,
            instances=True, parameters: dict | None = None) -> str:
    lines = [f'name: "{name}"', head, f"max_batch_size: {max_batch}"]
    lines += [_tensor("input", *t) for t in inputs] + [_tensor("output", *t) for t in outputs]
    if batching and topts.dynamic_batching:
        preferred = "".join(f"\n  preferred_batch_size: {b}" for b in topts.preferred_batch_sizes)
        lines.append(f"dynamic_batching {{{preferred}\n  max_queue_delay_microseconds: {topts.max_queue_delay_us}\n}}")
    if instances:
        kind = "KIND_GPU" if topts.kind == "gpu" else "KIND_CPU"
        lines.append(f"instance_group [\n  {{\n    count: {topts.instances}\n    kind: {kind}\n  }}\n]")
    for key, value in (parameters or {}).items():
        lines.append(f'parameters {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}')
    return "\n".join(lines) + "\n"


def _ensemble(plan: Plan, model_outputs: list[str], topts: TritonOptions) -> str:
    n = plan.name
    feeds = plan.settings["inputs"]
    tok_out = "".join(f'\n      output_map {{ key: "{i}" value: "{i}" }}' for i in feeds)
    if "attention_mask" not in feeds:
        tok_out += '\n      output_map { key: "attention_mask" value: "attention_mask" }'
    model_in = "".join(f'\n      input_map {{ key: "{i}" value: "{i}" }}' for i in feeds)
    post_out = "".join(f'\n      output_map {{ key: "{o}" value: "{o}" }}' for o in model_outputs)
    steps = (f'  step [\n    {{\n      model_name: "{n}_tokenize"\n      model_version: -1\n'
             f'      input_map {{ key: "TEXT" value: "TEXT" }}{tok_out}\n'
             f'      output_map {{ key: "TOKENS" value: "TOKENS" }}\n'
             f'      output_map {{ key: "TRUNCATED" value: "TRUNCATED" }}\n    }},\n'
             f'    {{\n      model_name: "{n}_model"\n      model_version: -1{model_in}\n'
             f'      output_map {{ key: "{plan.output}" value: "model_output" }}\n    }},\n'
             f'    {{\n      model_name: "{n}_post"\n      model_version: -1\n'
             f'      input_map {{ key: "MODEL_OUTPUT" value: "model_output" }}\n'
             f'      input_map {{ key: "attention_mask" value: "attention_mask" }}{post_out}\n    }}\n  ]')
    body = _config(n, 'platform: "ensemble"', plan.max_batch_size, [("TEXT", "TYPE_STRING", [1])], _outputs(plan),
                   topts, batching=False, instances=False,
                   parameters={"torchship_source": str(plan.folder), "torchship_backend": plan.backend})
    return body + f"ensemble_scheduling {{\n{steps}\n}}\n"


def _model_output_dims(plan: Plan) -> list:
    return [plan.dims["EMBEDDING"][0]] if plan.output in ("sentence_embedding", "logits") else [-1,
                                                                                                 plan.dims["EMBEDDING"][0]]


def _python_models(plan: Plan, topts: TritonOptions, layout: str, native_model: bool) -> dict[str, dict]:
    """{model name: {"config": text, "files": {name: source or text}, "settings": serving.json}}"""
    s = plan.settings
    head = 'backend: "python"'
    text_in = [("TEXT", "TYPE_STRING", [1])]
    feeds = [(i, "TYPE_INT64", [-1]) for i in s["inputs"]]
    if layout == "single":
        return {plan.name: {"config": _config(plan.name, head, plan.max_batch_size, _inputs(plan), _outputs(plan),
                                              topts, parameters={"torchship_source": str(plan.folder),
                                                                 "torchship_backend": plan.backend}),
                            "files": {"tokenizer.json": plan.folder / "tokenizer.json", "model.onnx": plan.model_file},
                            "settings": {**s, "step": "text", "tokenizer": "tokenizer.json", "model": "model.onnx"}}}
    n = plan.name
    masks = [] if "attention_mask" in s["inputs"] else [("attention_mask", "TYPE_INT64", [-1])]
    counts = [("TOKENS", "TYPE_INT32", [1]), ("TRUNCATED", "TYPE_INT32", [1])]
    out_dims = _model_output_dims(plan)
    models = {
        f"{n}_tokenize": {"config": _config(f"{n}_tokenize", head, plan.max_batch_size, text_in,
                                            feeds + masks + counts, topts),
                          "files": {"tokenizer.json": plan.folder / "tokenizer.json"},
                          "settings": {**s, "step": "tokenize", "tokenizer": "tokenizer.json"}},
        f"{n}_post": {"config": _config(f"{n}_post", head, plan.max_batch_size,
                                        [("MODEL_OUTPUT", "TYPE_FP32", out_dims), ("attention_mask", "TYPE_INT64", [-1])],
                                        _outputs(plan)[:-2], topts),
                      "files": {}, "settings": {**s, "step": "post"}},
    }
    if not native_model:
        models[f"{n}_model"] = {"config": _config(f"{n}_model", head, plan.max_batch_size, feeds,
                                                  [(plan.output, "TYPE_FP32", out_dims)], topts),
                                "files": {"model.onnx": plan.model_file},
                                "settings": {**s, "step": "model", "model": "model.onnx"}}
    return models


def write_text_repo(folder: str | Path, repo: str | Path, topts: TritonOptions = TritonOptions(),
                    sopts: ServeOptions = ServeOptions(), *, default_delay: bool = False) -> list[Path]:
    """Write the text model (and its steps) for ``folder`` into ``repo``; returns the model folders written,
    the one clients call first. ``default_delay``: the queue delay was not given, use the measured one."""
    from torchship.serving.triton_repo import check_repository, plan_model, write_triton_repo

    sopts = sopts.checked()
    repo = Path(repo)
    plan = plan_text(folder, topts, sopts)
    check_repository(repo, plan.name)
    readme_path(repo)  # where the README goes, or a refusal, before anything is written
    if plan.task == TENSORS:
        written = [write_triton_repo(folder, repo, replace(topts, name=plan.name))]
        write_readme(repo)
        return written
    if default_delay:
        topts = replace(topts, max_queue_delay_us=TEXT_QUEUE_DELAY_US)
    layout = sopts.resolved_layout
    native = sopts.runtime != "python"
    models = _python_models(plan, topts, layout, native)
    names = list(models) + ([plan.name] if layout == "ensemble" else []) + ([f"{plan.name}_model"] if native else [])
    for name in names:  # all of it checked before anything is written
        check_repository(repo, name)
    native_opts = replace(topts, name=f"{plan.name}_model", variant=plan.variant)
    if native:
        plan_model(folder, native_opts)
    configs = {name: spec["config"] for name, spec in models.items()}
    if layout == "ensemble":
        configs[plan.name] = _ensemble(plan, [o[0] for o in _outputs(plan)[:-2]], topts)
    for text in configs.values():
        parse_config(text)  # Triton's schema
    marker = {"source": str(plan.folder), "variant": plan.backend, "folder_variant": plan.variant, "why": plan.why,
              "task": plan.task, "runtime": sopts.runtime, "layout": layout, "entry": plan.name}
    written = write_models(repo, configs, models, marker)
    if native:
        written.append(write_triton_repo(folder, repo, native_opts))
        mark(written[-1], {**marker, "needs": sopts.runtime})
    write_readme(repo)
    return written


def write_models(repo: Path, configs: dict[str, str], models: dict[str, dict], marker: dict) -> list[Path]:
    """Write each model folder (its config, and for a Python model the carried files, serving.json and its own
    files) into a staging folder in ``repo``, then move them into place; returns the folders in ``configs``' order."""
    from torchship._fs import check_writable
    from torchship.external_data import copy_model

    repo.mkdir(parents=True, exist_ok=True)
    check_writable(repo)
    stage = Path(tempfile.mkdtemp(prefix=".torchship-", dir=repo))
    try:
        for name, text in configs.items():
            place = stage / name
            (place / "1").mkdir(parents=True)
            (place / "config.pbtxt").write_text(text)
            spec = models.get(name)
            files = []
            if spec is not None:
                for target, source in carried_files().items():
                    (place / "1" / target).parent.mkdir(exist_ok=True)
                    shutil.copyfile(source, place / "1" / target)
                (place / "1" / "serving.json").write_text(json.dumps(spec["settings"], indent=2) + "\n")
                for target, source in spec["files"].items():
                    if target.endswith(".onnx"):  # with its weights, if external
                        copy_model(source, place / "1" / target)
                    else:
                        shutil.copyfile(source, place / "1" / target)
                files = [*carried_files(), "serving.json", *spec["files"]]
            needs = "python" if spec is not None else None
            (place / MARKER).write_text(json.dumps({**marker, "needs": needs, "files": files}, indent=2) + "\n")
        written = []
        for name in configs:
            final = repo / name
            if final.exists():
                shutil.rmtree(final)
            (stage / name).rename(final)
            written.append(final)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return written
