"""Export a model to ONNX through its family's spec, validate against eager PyTorch, write the folder.

The user's model is never touched: export runs on a deep copy, inside a wrapper module that is
put in eval mode. (torch.onnx.export restores the *wrapper's* training flag afterwards; a wrapper
left in its default training mode flips the wrapped model into training mode, turning dropout on.)
"""

from __future__ import annotations

import contextlib
import copy
import io
import time
import types
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

from torchship import _progress, external_data, loading, shapes
from torchship._fs import check_output_dir, scratch_dir, staged_dir
from torchship._torch import run_named
from torchship.artifact import Artifact, ReferenceCase, Variant, model_bytes, new_manifest, save_reference
from torchship.manifest_sections import BuildOptions, Validation
from torchship.errors import ExportError, InputError, TorchshipError, first_line, root_cause
from torchship.exporters.graph_repairs import repair_file
from torchship.exporters.sources import model_type_of
from torchship.exporters.spec import EMPTY_OK_AXES, ModelIO, ModelSpec, spec_for
from torchship.validation import check, run_reference_cases

EXPORTERS = ("torchscript", "dynamo")
ATTN_IMPLEMENTATIONS = ("eager", "sdpa")
MIN_OPSET, MAX_OPSET = 14, 23
NO_CACHE_NOTES = ("exported without its KV cache (--no-cache): logits for the whole sequence, no generate",)

# Defaults per export path. Which path a family uses by default is the spec's ``default_exporter``,
# chosen by measurement: for encoders TorchScript from eager attention, which ORT's transformer
# optimizer fuses completely (scripts/fusion_matrix.py); for decoders the dynamo path, which emits
# ONNX's own Attention op (with the KV cache) from SDPA at opset 23.
PATH_DEFAULTS = {
    "torchscript": {"opset": 17, "attn_implementation": "eager"},
    "dynamo": {"opset": 23, "attn_implementation": "sdpa"},
}


@dataclass(frozen=True)
class ExportOptions:
    task: str | None = None  # None: the family's default for the checkpoint
    exporter: str | None = None  # None: the family's measured default
    opset: int | None = None  # None: the path's default
    attn_implementation: str | None = None  # None: the path's default
    atol: float | None = None  # None: the family's tolerance
    allow_pickle: bool = False
    trust_remote_code: bool = False
    revision: str | None = None
    kind: str | None = None  # "encoder" / "decoder" / "unet": refuse other families (export-bert, ...)
    dummy_case: object | None = None  # None: the family's
    validation_cases: tuple | None = None  # None: the shape config's min/use/max, else the family's
    shapes: shapes.ShapeConfig | None = None  # the shapes the model must serve (validated, kept in the manifest)
    external_data: str = "auto"  # auto: above 1 GiB of weights; always; never
    tokenizer: str | None = None  # a tokenizer folder to attach, in place of the checkpoint's own (or its lack)
    no_cache: bool = False  # a causal LM of the generic path without its KV cache (logits only)

    def resolved(self, spec: ModelSpec | None = None) -> "ExportOptions":
        """Check the options; with the family's ``spec``, fill in the defaults of its export path."""
        if self.exporter is not None and self.exporter not in EXPORTERS:
            raise InputError(f"unknown exporter {self.exporter!r}; use one of {', '.join(EXPORTERS)}")
        if self.atol is not None and not self.atol > 0:
            raise InputError(f"--atol must be positive, got {self.atol}")
        if self.opset is not None and not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise InputError(f"opset {self.opset} is out of range; use {MIN_OPSET} to {MAX_OPSET}")
        if self.attn_implementation is not None and self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise InputError(f"unknown attention implementation {self.attn_implementation!r}; use eager or sdpa")
        if self.external_data not in external_data.MODES:
            raise InputError(f"unknown external data mode {self.external_data!r}; use "
                             f"{', '.join(external_data.MODES)}")
        if spec is None:
            return self
        exporter = self.exporter or spec.default_exporter
        defaults = PATH_DEFAULTS[exporter]
        opset = self.opset if self.opset is not None else defaults["opset"]
        attn = self.attn_implementation or defaults["attn_implementation"]
        return replace(self, exporter=exporter, opset=opset, attn_implementation=attn)


@dataclass(frozen=True)
class _Plan:
    """What one export does: the family, the task, the cases, resolved from options and the model."""

    spec: ModelSpec
    task: str
    io: ModelIO
    dummy_case: object
    validation_cases: tuple
    atol: float
    shapes: shapes.ResolvedShapes | None = None
    use_case: object | None = None  # the shape config's use case, whose outputs the config may state


def _resolve_task(spec: ModelSpec, requested: str | None, config, folder: Path | None) -> str:
    """The requested task, else the family's default for this config; checked before any loading."""
    task = requested or spec.default_task(config)
    if task not in spec.tasks:
        raise InputError(f"unknown task {task!r} for {spec.family}; use one of {', '.join(spec.tasks)}")
    problem = spec.task_problem(task, config, folder)
    if problem:
        raise InputError(problem)
    return task


def _plan(spec: ModelSpec, model, task: str, opts: ExportOptions) -> _Plan:
    dummy = opts.dummy_case or spec.dummy_case
    model_io = spec.io(model, task)
    resolved = use_case = None
    if opts.shapes is not None:
        resolved = shapes.resolve(opts.shapes, model_io, empty_ok_axes=EMPTY_OK_AXES)
        by_which = {w: spec.case_for(resolved.sizes(w), model.config) for w in shapes.WHICH}
        use_case = by_which["use"]
        distinct = {}
        for case in by_which.values():  # min, use, max; a shape given twice is validated once
            distinct.setdefault(spec.case_shape(case), case)
        cases = tuple(opts.validation_cases or distinct.values())
    else:
        cases = tuple(opts.validation_cases or spec.validation_cases)
    others = [c for c in cases if spec.case_shape(c) != spec.case_shape(dummy)]
    if not others or (opts.shapes is None and len(others) < len(cases)):
        hint = "; widen the shape config's min..max" if opts.shapes is not None else ""
        raise InputError(f"validation shapes must differ from the export's dummy shape ({dummy.label()}){hint}")
    return _Plan(spec, task, model_io, dummy, cases, opts.atol or spec.atol, resolved, use_case)


def _run_export(holder: list, plan: _Plan, dummy: dict, path: Path, opts: ExportOptions) -> bool:
    """Export the wrapper in ``holder`` (taken out, so PyTorch's weights go as soon as torch has written the
    graph) into a scratch folder beside ``path``, then write ``path`` by torchship's external-data rules
    (one ``.data`` file, only when large); returns whether it has external data."""
    import gc

    with scratch_dir(path.parent, "export") as scratch:
        _torch_export(holder.pop(), plan, dummy, scratch / path.name, opts)
        gc.collect()
        _name_axes(scratch / path.name, plan.io)
        return external_data.normalize(scratch / path.name, path, opts.external_data)


def _torch_export(wrapper, plan: _Plan, dummy: dict, path: Path, opts: ExportOptions) -> None:
    import torch

    args = tuple(torch.from_numpy(dummy[n]) for n in plan.io.input_names)
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), _quiet_torch_logs():
        warnings.simplefilter("ignore")
        if opts.exporter == "torchscript":
            dynamic_axes = {t.name: t.dynamic_axes() for t in (*plan.io.inputs, *plan.io.outputs)}
            torch.onnx.export(wrapper, args, str(path), input_names=list(plan.io.input_names),
                              output_names=list(plan.io.output_names), dynamic_axes=dynamic_axes,
                              opset_version=opts.opset, do_constant_folding=True, dynamo=False)
        else:
            program = torch.onnx.export(wrapper, args, None, input_names=list(plan.io.input_names),
                                        output_names=list(plan.io.output_names),
                                        dynamic_shapes=_dynamic_shapes(wrapper, plan.io),
                                        opset_version=opts.opset, dynamo=True, verbose=False)
            program.save(str(path), external_data=opts.external_data != "never" and _is_large(wrapper))
            repair_file(path)


def _dynamic_shapes(wrapper, io: ModelIO) -> tuple:
    """torch.export's dynamic shapes, each axis by its name, shaped like ``forward``'s arguments
    (inputs taken by ``*args`` form one nested tuple, as torch.export requires). Names rather than
    ``Dim`` objects: torch.export may then relate axes itself (a UNet's latent sizes are even; its
    timestep count equals the batch in the trace) instead of failing and exporting a second time."""
    import inspect

    shapes = [dict(t.dynamic_axes()) for t in io.inputs]
    params = inspect.signature(wrapper.forward).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        fixed = sum(p.kind is not inspect.Parameter.VAR_POSITIONAL for p in params)
        shapes = shapes[:fixed] + [tuple(shapes[fixed:])]
    return tuple(shapes)


@contextlib.contextmanager
def _quiet_torch_logs():
    """torch's logging setup (initialized when torch.export first runs) resets the levels of its own
    loggers, so the exporter's notes ("torchvision is not installed", ...) reach the terminal even
    when the CLI quieted torch.onnx; they are turned down for the export only."""
    import logging

    import torch._logging

    torch._logging.set_logs(onnx=logging.ERROR, export=logging.ERROR)
    try:
        yield
    finally:
        torch._logging.set_logs()


def _name_axes(path: Path, io: ModelIO) -> None:
    """Give the graph's inputs and outputs the spec's axis names. The dynamo exporter names an axis by
    what it traced (a UNet's timestep axis as "batch", output sizes as formulas); the declared names
    are what the manifest, shape configs and serving configs refer to."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    specs = {t.name: t for t in (*io.inputs, *io.outputs)}
    changed = False
    for value in (*model.graph.input, *model.graph.output):
        spec = specs.get(value.name)
        dims = value.type.tensor_type.shape.dim
        if spec is None or len(dims) != len(spec.axes):
            continue
        for dim, axis in zip(dims, spec.axes):
            if isinstance(axis, str) and dim.dim_param != axis:
                dim.dim_param = axis
                changed = True
    if changed:
        onnx.save(model, str(path))  # external data references stay as they are


def _is_large(module) -> bool:
    """Whether a module's weights pass the external-data threshold."""
    size = sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
    return size > external_data.THRESHOLD_BYTES


@dataclass
class _Loaded:
    """What export works on; ``model`` is let go (set to None) once it is no longer needed, so a
    large model is not held in memory while ONNX Runtime validates the export."""

    model: object
    tokenizer: object | None
    source: dict
    source_folder: Path | None


def export(model: str, output: str | Path, options: ExportOptions = ExportOptions(), *,
           progress: _progress.Progress = _progress.SILENT) -> Artifact:
    """Export the checkpoint ``model`` (hub id or folder) to the folder ``output``."""
    opts = options.resolved()
    check_output_dir(Path(output))  # before minutes of loading, not after
    progress.step(f"loading {model}")
    ref = loading.resolve(model, revision=opts.revision)
    model_type, config_json, ref = loading.peek_config(ref)
    spec = _cache_choice(spec_for(model_type, source=model, kind=opts.kind, config=config_json, task=opts.task), opts)
    opts = opts.resolved(spec)
    config = spec.load_config(ref, trust_remote_code=opts.trust_remote_code)
    task = _resolve_task(spec, opts.task, config, ref.path)
    tokenizer = _tokenizer_for(spec, ref, config, opts)  # checked against the model before its weights load
    source = {"model": model, "name": loading.model_name(ref), "resolved": ref.describe(), "revision": ref.revision,
              "subfolder": ref.subfolder, "architectures": list(getattr(config, "architectures", None) or [])}
    loaded = _Loaded(spec.load_model(ref, config, task, allow_pickle=opts.allow_pickle,
                                     trust_remote_code=opts.trust_remote_code,
                                     attn_implementation=opts.attn_implementation),
                     tokenizer, source, ref.path)
    if loaded.tokenizer is None and spec.text_api:
        progress.step(f"WARNING: {model} has no tokenizer; the folder will serve token ids only (torchship "
                      f"{spec.text_api} needs one: export again with --tokenizer FOLDER, or save one into "
                      f"{output} with tokenizer.save_pretrained())")
    return _export_loaded(loaded, spec, task, Path(output), opts, progress)


def _cache_choice(spec: ModelSpec, opts: ExportOptions) -> ModelSpec:
    """The family's spec, or with --no-cache its export without a KV cache (causal LMs of the generic path)."""
    without = getattr(spec, "without_cache", None) if opts.no_cache else None
    if opts.no_cache and without is None:
        raise InputError(f"--no-cache is for causal LMs of the generic path; {spec.family} exports as its spec says")
    return without() if without is not None else spec


def _tokenizer_for(spec: ModelSpec, ref, config, opts: ExportOptions):
    """--tokenizer's folder, else the checkpoint's tokenizer (or None); refused when its ids do not fit the
    model's embedding table."""
    if opts.tokenizer is None:
        tokenizer = spec.load_tokenizer(ref, trust_remote_code=opts.trust_remote_code)
        where = "the checkpoint's tokenizer"
    elif not spec.text_api:
        raise InputError(f"--tokenizer is for text models; {spec.group.one} takes no text: drop --tokenizer")
    else:
        tokenizer = loading.load_tokenizer_folder(opts.tokenizer, trust_remote_code=opts.trust_remote_code)
        where = f"the tokenizer in {opts.tokenizer}"
    if tokenizer is not None:
        _check_fits(tokenizer, spec.normalized(config).vocab_size, where)
    return tokenizer


def _check_fits(tokenizer, model_rows: int, where: str) -> None:
    from torchship.exporters.vocab import misfit

    problem = misfit(tokenizer, model_rows)
    if problem:
        raise InputError(f"{where} {problem}; pass the tokenizer the model was trained with: --tokenizer FOLDER")


def export_model(model, output: str | Path, *, tokenizer=None, task: str | None = None,
                 options: ExportOptions = ExportOptions(),
                 progress: _progress.Progress = _progress.SILENT) -> Artifact:
    """Export an already-loaded transformers model object; the object itself is left unchanged."""
    check_output_dir(Path(output))
    config = getattr(model, "config", None)
    spec = _cache_choice(spec_for(model_type_of(model), source=type(model).__name__, kind=options.kind,
                                  config=config.to_dict() if hasattr(config, "to_dict") else None,
                                  task=task or options.task), options)
    opts = options.resolved(spec)
    if tokenizer is not None:
        _check_fits(tokenizer, spec.normalized(model.config).vocab_size, "the tokenizer given")
    task = _resolve_task(spec, task, types.SimpleNamespace(architectures=[type(model).__name__]), None)
    source = {"model": getattr(model.config, "_name_or_path", "") or type(model).__name__,
              "resolved": "python object", "revision": None, "architectures": [type(model).__name__]}
    loaded = _Loaded(spec.prepare_copy(copy.deepcopy(model).eval(), opts.attn_implementation), tokenizer, source, None)
    return _export_loaded(loaded, spec, task, Path(output), opts, progress)


def _export_loaded(loaded: _Loaded, spec: ModelSpec, task: str, output: Path,
                   opts: ExportOptions, progress: _progress.Progress) -> Artifact:
    if getattr(spec, "export_graphs", None) is not None:  # a variant of several graphs (exporters/towers.py)
        return spec.export_graphs(loaded, task, output, opts, progress)
    model, loaded.model = loaded.model, None  # from here on, this function holds the only reference
    config = model.config
    plan = _plan(spec, model, task, opts)
    wrapper = spec.wrapper(model, plan.io)

    # Reference outputs from eager PyTorch, computed before the export touches anything.
    cases = []
    for i, case in enumerate(plan.validation_cases):
        feeds = spec.sample_inputs(config, plan.io, case, seed=100 + i)
        try:
            outputs = run_named(wrapper, feeds, plan.io.input_names, plan.io.output_names)
        except Exception as exc:  # a model that cannot run at a validation shape: refused in one line
            raise ExportError(f"eager PyTorch fails on {type(model).__name__} at {case.label()}: {root_cause(exc)}") from None
        cases.append(ReferenceCase(case.label(), feeds, outputs))
    if plan.use_case is not None:
        use_outputs = next((c.outputs for c, case in zip(cases, plan.validation_cases)
                            if spec.case_shape(case) == spec.case_shape(plan.use_case)), {})
        shapes.check_outputs(plan.shapes, use_outputs, source=opts.shapes.source)
    dummy = spec.sample_inputs(config, plan.io, plan.dummy_case, seed=7)

    with staged_dir(output) as tmp:
        onnx_path = tmp / "model.onnx"
        spec.save_config(model, tmp)
        fusion = spec.fusion_settings(model)
        normalized = spec.normalized(config)
        model_type, model_class = model_type_of(model), type(model).__name__
        # The model is torchship's own here (loaded, or deep-copied from the caller's object), and the
        # reference outputs are already computed, so the export may run on it directly: a second copy
        # would cost a UNet's 3.5 GB. _run_export lets it go once torch has written the graph, before
        # the file is rewritten by the external-data rules (which holds the weights again).
        holder = [wrapper]
        del model, wrapper
        progress.step(f"exporting with {opts.exporter} (opset {opts.opset}, {opts.attn_implementation} attention)")
        start = time.perf_counter()
        try:
            external = _run_export(holder, plan, dummy, onnx_path, opts)
        except (TorchshipError, OSError):  # ours say what is wrong themselves; a full disk is the machine's
            raise
        except Exception as exc:  # torch raises many exception types from deep inside
            raise ExportError(f"torch.onnx.export ({opts.exporter}) failed on {model_class}: {root_cause(exc)}; "
                              f"try --exporter {'dynamo' if opts.exporter == 'torchscript' else 'torchscript'}") from None
        seconds = time.perf_counter() - start
        _check_onnx(onnx_path)

        progress.step("validating against eager PyTorch")
        save_reference(tmp, cases)
        report = run_reference_cases(onnx_path, cases, atol=plan.atol, spec=spec)
        check(report, what=f"the {opts.exporter} export")

        if loaded.tokenizer is not None:
            loaded.tokenizer.save_pretrained(tmp)
        spec.save_extras(loaded.source_folder, tmp)
        variant = Variant(name="model", file="model.onnx", stage="export",
                          options=BuildOptions.from_json({"exporter": opts.exporter, "opset": opts.opset,
                                                          "external_data": external}),
                          size_bytes=model_bytes(onnx_path), seconds=round(seconds, 3),
                          validation=Validation.from_json(report.to_json()),
                          notes=NO_CACHE_NOTES if opts.no_cache else ())
        manifest = new_manifest(
            source=loaded.source, family=spec.family, model_type=model_type, task=task,
            ort_model_type=spec.ort_model_type, fusion=fusion, io=plan.io,
            export={"exporter": opts.exporter, "opset": opts.opset,
                    "attn_implementation": opts.attn_implementation,
                    "dummy_shape": list(spec.case_shape(plan.dummy_case)),
                    "validation_shapes": [c.label() for c in plan.validation_cases],
                    "tokenizer": loaded.tokenizer is not None,
                    **({"kv_cache": False} if opts.no_cache else {})},
            text=spec.text_settings(loaded.source_folder, config, loaded.tokenizer, task),
            atol=plan.atol, variant=variant, shapes=plan.shapes.to_json() if plan.shapes is not None else None,
            model_config=normalized.to_json())
        Artifact(tmp, manifest).save(manifest)
    return Artifact.open(output)


def _check_onnx(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:  # onnx raises ValidationError and others
        raise ExportError(f"the exported file fails the ONNX checker: {first_line(exc)}") from None
