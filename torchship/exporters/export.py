"""Export a BERT-like encoder to ONNX, validate it against eager PyTorch, write the folder.

The user's model is never touched: export runs on a deep copy, inside a wrapper module that is
put in eval mode. (torch.onnx.export restores the *wrapper's* training flag afterwards; a wrapper
left in its default training mode flips the wrapped model into training mode, turning dropout on.)
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from torchship import _progress
from torchship._fs import staged_dir
from torchship._torch import make_wrapper, run_named
from torchship.artifact import (Artifact, Manifest, ReferenceCase, Variant, library_versions,
                                save_reference)
from torchship.errors import ExportError, InputError
from torchship import loading
from torchship.exporters.inputs import TextShape, make_text_inputs
from torchship.exporters.spec import (BATCH, SEQUENCE, TASKS, TEXT_CLASSIFICATION, EncoderSpec,
                                      spec_for, task_from_architectures)
from torchship.validation import check, run_reference_cases

EXPORTERS = ("torchscript", "dynamo")
ATTN_IMPLEMENTATIONS = ("eager", "sdpa")
MIN_OPSET, MAX_OPSET = 14, 23

# Defaults per export path, chosen by measurement on all-MiniLM-L6-v2 (see README): TorchScript
# from eager attention is the path whose graph ORT's transformer optimizer fuses completely
# (EmbedLayerNormalization, Attention per layer, SkipLayerNormalization, BiasGelu). The dynamo
# path emits ONNX's own Attention op from SDPA at opset 23 instead.
PATH_DEFAULTS = {
    "torchscript": {"opset": 17, "attn_implementation": "eager"},
    "dynamo": {"opset": 23, "attn_implementation": "sdpa"},
}

DUMMY_SHAPE = TextShape(2, 16)
VALIDATION_SHAPES = (TextShape(1, 9), TextShape(3, 23, (23, 11, 4)))


@dataclass(frozen=True)
class ExportOptions:
    task: str | None = None  # None: from the checkpoint's architectures
    exporter: str = "torchscript"
    opset: int | None = None  # None: the path's default
    attn_implementation: str | None = None  # None: the path's default
    atol: float | None = None  # None: the family's tolerance
    allow_pickle: bool = False
    trust_remote_code: bool = False
    revision: str | None = None
    dummy_shape: TextShape = DUMMY_SHAPE
    validation_shapes: tuple[TextShape, ...] = field(default=VALIDATION_SHAPES)

    def resolved(self) -> "ExportOptions":
        if self.exporter not in EXPORTERS:
            raise InputError(f"unknown exporter {self.exporter!r}; use one of {', '.join(EXPORTERS)}")
        if self.task is not None and self.task not in TASKS:
            raise InputError(f"unknown task {self.task!r}; use one of {', '.join(TASKS)}")
        defaults = PATH_DEFAULTS[self.exporter]
        opset = self.opset if self.opset is not None else defaults["opset"]
        if not MIN_OPSET <= opset <= MAX_OPSET:
            raise InputError(f"opset {opset} is out of range; use {MIN_OPSET} to {MAX_OPSET}")
        attn = self.attn_implementation or defaults["attn_implementation"]
        if attn not in ATTN_IMPLEMENTATIONS:
            raise InputError(f"unknown attention implementation {attn!r}; use eager or sdpa")
        if self.atol is not None and not self.atol > 0:
            raise InputError(f"--atol must be positive, got {self.atol}")
        for shape in self.validation_shapes:
            if shape == self.dummy_shape:
                raise InputError("validation shapes must differ from the export's dummy shape")
        return replace(self, opset=opset, attn_implementation=attn)


def _eager_outputs(model, feeds, output_names) -> dict[str, np.ndarray]:
    return run_named(make_wrapper(model, output_names), feeds, tuple(feeds), output_names)


def _run_export(wrapper, dummy: dict[str, np.ndarray], path: Path, spec_inputs, spec_outputs,
                opts: ExportOptions) -> None:
    import torch

    args = tuple(torch.from_numpy(dummy[t.name]) for t in spec_inputs)
    input_names = [t.name for t in spec_inputs]
    output_names = [t.name for t in spec_outputs]
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
        warnings.simplefilter("ignore")
        if opts.exporter == "torchscript":
            dynamic_axes = {t.name: {i: a for i, a in enumerate(t.axes) if isinstance(a, str) and a in (BATCH, SEQUENCE)}
                            for t in (*spec_inputs, *spec_outputs)}
            torch.onnx.export(wrapper, args, str(path), input_names=input_names,
                              output_names=output_names, dynamic_axes=dynamic_axes,
                              opset_version=opts.opset, do_constant_folding=True, dynamo=False)
        else:
            batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
            dynamic_shapes = tuple({0: batch, 1: seq} for _ in spec_inputs)
            program = torch.onnx.export(wrapper, args, None, input_names=input_names,
                                        output_names=output_names, dynamic_shapes=dynamic_shapes,
                                        opset_version=opts.opset, dynamo=True, verbose=False)
            program.save(str(path), external_data=False)


@dataclass(frozen=True)
class _Loaded:
    model: object
    config: object
    tokenizer: object | None
    source: dict
    text: dict


def export(model: str, output: str | Path, options: ExportOptions = ExportOptions(), *,
           progress: _progress.Progress = _progress.SILENT) -> Artifact:
    """Export the checkpoint ``model`` (hub id or folder) to the folder ``output``."""
    opts = options.resolved()
    progress.step(f"loading {model}")
    ref = loading.resolve(model, revision=opts.revision)
    config = loading.load_config(ref, trust_remote_code=opts.trust_remote_code)
    spec = spec_for(getattr(config, "model_type", "?"), source=model)
    task = opts.task or task_from_architectures(getattr(config, "architectures", None))
    torch_model = loading.load_model(ref, config, task=task, allow_pickle=opts.allow_pickle,
                                     trust_remote_code=opts.trust_remote_code,
                                     attn_implementation=opts.attn_implementation)
    tokenizer = loading.load_tokenizer(ref, trust_remote_code=opts.trust_remote_code)
    loaded = _Loaded(torch_model, config, tokenizer,
                     {"model": model, "resolved": ref.describe(), "revision": ref.revision,
                      "architectures": list(getattr(config, "architectures", None) or [])},
                     _text_settings(ref, config, tokenizer, task))
    return _export_loaded(loaded, spec, task, Path(output), opts, progress)


def export_model(model, output: str | Path, *, tokenizer=None, task: str | None = None,
                 options: ExportOptions = ExportOptions(),
                 progress: _progress.Progress = _progress.SILENT) -> Artifact:
    """Export an already-loaded transformers model object; the object itself is left unchanged."""
    opts = options.resolved()
    config = model.config
    spec = spec_for(getattr(config, "model_type", "?"), source=type(model).__name__)
    if task is None:
        task = TEXT_CLASSIFICATION if type(model).__name__.endswith("ForSequenceClassification") \
            else task_from_architectures(None)
    copied = copy.deepcopy(model).eval()
    if copied.config._attn_implementation != opts.attn_implementation:
        copied.set_attn_implementation(opts.attn_implementation)
    loaded = _Loaded(copied, copied.config, tokenizer,
                     {"model": getattr(config, "_name_or_path", "") or type(model).__name__,
                      "resolved": "python object", "revision": None,
                      "architectures": [type(model).__name__]},
                     _text_settings(None, config, tokenizer, task))
    return _export_loaded(loaded, spec, task, Path(output), opts, progress)


def _export_loaded(loaded: _Loaded, spec: EncoderSpec, task: str, output: Path,
                   opts: ExportOptions, progress: _progress.Progress) -> Artifact:
    config = loaded.config
    reference_model = loaded.model
    has_pooler = getattr(reference_model, "pooler", None) is not None
    num_labels = int(getattr(config, "num_labels", 2))
    spec_inputs = spec.inputs()
    spec_outputs = spec.outputs(task, has_pooler=has_pooler, num_labels=num_labels)
    output_names = tuple(t.name for t in spec_outputs)
    atol = opts.atol or spec.atol
    gen = dict(vocab_size=int(config.vocab_size),
               type_vocab_size=int(getattr(config, "type_vocab_size", 1) or 1),
               pad_token_id=int(getattr(config, "pad_token_id", 0) or 0))

    # Reference outputs from eager PyTorch, computed before the export touches anything.
    cases = []
    for i, shape in enumerate(opts.validation_shapes):
        feeds = make_text_inputs(spec.input_names, shape, seed=100 + i, **gen)
        cases.append(ReferenceCase(shape.label(), feeds, _eager_outputs(reference_model, feeds, output_names)))
    dummy = make_text_inputs(spec.input_names, opts.dummy_shape, seed=7, **gen)

    with staged_dir(output) as tmp:
        onnx_path = tmp / "model.onnx"
        progress.step(f"exporting with {opts.exporter} (opset {opts.opset}, {opts.attn_implementation} attention)")
        start = time.perf_counter()
        export_copy = copy.deepcopy(reference_model).eval()
        wrapper = make_wrapper(export_copy, output_names)
        try:
            _run_export(wrapper, dummy, onnx_path, spec_inputs, spec_outputs, opts)
        except Exception as exc:  # torch raises many exception types from deep inside
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise ExportError(f"torch.onnx.export ({opts.exporter}) failed: {first}; "
                              f"try --exporter {'dynamo' if opts.exporter == 'torchscript' else 'torchscript'}") from None
        finally:
            del wrapper, export_copy
        seconds = time.perf_counter() - start
        _check_onnx(onnx_path)

        progress.step("validating against eager PyTorch")
        save_reference(tmp, cases)
        report = run_reference_cases(onnx_path, cases, atol=atol)
        check(report, what=f"the {opts.exporter} export")

        if loaded.tokenizer is not None:
            loaded.tokenizer.save_pretrained(tmp)
        config.save_pretrained(tmp)
        variant = Variant(
            name="model", file="model.onnx", stage="export",
            options={"exporter": opts.exporter, "opset": opts.opset},
            size_bytes=onnx_path.stat().st_size, seconds=round(seconds, 3),
            validation=report.to_json(),
        )
        manifest = Manifest(
            source=loaded.source,
            family=spec.family, model_type=config.model_type, task=task,
            ort_model_type=spec.ort_model_type,
            num_heads=int(config.num_attention_heads), hidden_size=int(config.hidden_size),
            num_layers=int(config.num_hidden_layers),
            inputs=[t.to_json() for t in spec_inputs],
            outputs=[t.to_json() for t in spec_outputs],
            export={"exporter": opts.exporter, "opset": opts.opset,
                    "attn_implementation": opts.attn_implementation,
                    "dummy_shape": [opts.dummy_shape.batch, opts.dummy_shape.sequence],
                    "validation_shapes": [s.label() for s in opts.validation_shapes],
                    "tokenizer": loaded.tokenizer is not None},
            text=loaded.text,
            versions=library_versions(),
            atol=atol,
            variants={"model": variant},
        )
        artifact = Artifact(tmp, manifest)
        artifact.save(manifest)
    return Artifact.open(output)


def _check_onnx(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:  # onnx raises ValidationError and others
        raise ExportError(f"the exported file fails the ONNX checker: {str(exc).splitlines()[0][:300]}") from None


def _text_settings(ref, config, tokenizer, task: str) -> dict:
    """How the text layer turns outputs into results: pooling for embeddings, labels for classifiers."""
    pooling, normalize, max_length, source = "mean", False, None, "default (mean pooling)"
    folder = ref.path if ref is not None else None
    if folder is not None and (folder / "modules.json").is_file():
        try:
            modules = json.loads((folder / "modules.json").read_text())
            for module in modules:
                kind = module.get("type", "")
                if kind.endswith("Pooling"):
                    pcfg = json.loads((folder / module["path"] / "config.json").read_text())
                    for mode, key in (("cls", "pooling_mode_cls_token"), ("max", "pooling_mode_max_tokens"),
                                      ("mean", "pooling_mode_mean_tokens")):
                        if pcfg.get(key):
                            pooling = mode
                if kind.endswith("Normalize"):
                    normalize = True
            st_cfg = folder / "sentence_bert_config.json"
            if st_cfg.is_file():
                max_length = json.loads(st_cfg.read_text()).get("max_seq_length")
            source = "sentence-transformers config"
        except (OSError, ValueError, KeyError):
            pass
    labels = None
    id2label = getattr(config, "id2label", None)
    if task == TEXT_CLASSIFICATION and id2label:
        labels = [id2label[i] for i in sorted(id2label)]
    if max_length is None and tokenizer is not None:
        tmax = getattr(tokenizer, "model_max_length", None)
        if isinstance(tmax, int) and tmax < 100_000:
            max_length = tmax
    if max_length is None:
        max_length = int(getattr(config, "max_position_embeddings", 512))
    return {"pooling": pooling, "normalize": normalize, "max_length": int(max_length),
            "labels": labels, "settings_from": source}
