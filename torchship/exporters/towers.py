"""The export of a variant of several graphs (an image-text model's text and vision towers): each graph exported
with the family's export path, checked, and validated against eager PyTorch at shapes other than the trace's, alone;
one folder written only when every graph passed (a staged folder: a failed validation leaves nothing).
"""

from __future__ import annotations

import time
from pathlib import Path

from torchship._fs import staged_dir
from torchship._torch import run_named
from torchship.artifact import Artifact, ReferenceCase, Variant, model_bytes, new_manifest, save_reference
from torchship.compare import ComparisonReport
from torchship.errors import ExportError, InputError, TorchshipError, root_cause
from torchship.exporters.export import _check_onnx, _Plan, _run_export
from torchship.exporters.sources import model_type_of
from torchship.manifest_sections import BuildOptions, Graph, Validation
from torchship.tensors import ModelIO
from torchship.validation import check, run_reference_cases


def _graph_cases(spec, model, tower_io: ModelIO, name: str, cases) -> list[ReferenceCase]:
    """Eager PyTorch's outputs of one tower at each validation case, computed before the export runs."""
    wrapper = spec.wrapper(model, tower_io)
    out = []
    for i, case in enumerate(cases):
        feeds = spec.sample_inputs(model.config, tower_io, case, seed=100 + i)
        try:
            outputs = run_named(wrapper, feeds, tower_io.input_names, tower_io.output_names)
        except Exception as exc:  # a model that cannot run at a validation shape: refused in one line
            raise ExportError(f"eager PyTorch fails on the {name} tower at {case.label()}: {root_cause(exc)}") from None
        out.append(ReferenceCase(f"{name}: {case.label()}", feeds, outputs))
    return out


def export_towers(spec, loaded, task: str, output: Path, opts, progress) -> Artifact:
    """Export ``spec.graphs`` of the loaded model as one variant of several graphs; returns the folder. The spec
    gives each graph's inputs and outputs (``tower_io``), its file (``graph_files``) and the manifest's ``text``
    section (``manifest_text``); its wrapper and sample inputs follow the graph's inputs."""
    model, loaded.model = loaded.model, None
    config = model.config
    if opts.shapes is not None:
        raise InputError(f"a shape config is for a folder of one graph; {spec.group.one} exports {len(spec.graphs)} "
                         f"({', '.join(spec.graphs)}): drop --config")
    ios = {name: spec.tower_io(model, name) for name in spec.graphs}
    dummy_case = opts.dummy_case or spec.dummy_case
    cases = tuple(opts.validation_cases or spec.validation_cases)
    references = {name: _graph_cases(spec, model, ios[name], name, cases) for name in spec.graphs}
    text = spec.manifest_text(model, loaded.source_folder)
    whole = ModelIO(tuple(t for io in ios.values() for t in io.inputs), tuple(t for io in ios.values() for t in io.outputs))

    with staged_dir(output) as tmp:
        spec.save_config(model, tmp)
        fusion = spec.fusion_settings(model)
        normalized = spec.normalized(config)
        model_type, model_class = model_type_of(model), type(model).__name__
        graphs, reports, seconds, external = [], [], 0.0, False
        for name in spec.graphs:
            path = tmp / spec.graph_files[name]
            plan = _Plan(spec, task, ios[name], dummy_case, cases, opts.atol or spec.atol)
            dummy = spec.sample_inputs(config, ios[name], dummy_case, seed=7)
            progress.step(f"exporting the {name} tower with {opts.exporter} (opset {opts.opset}, "
                          f"{opts.attn_implementation} attention)")
            start = time.perf_counter()
            try:
                external = _run_export([spec.wrapper(model, ios[name])], plan, dummy, path, opts) or external
            except (TorchshipError, OSError):
                raise
            except Exception as exc:  # torch raises many exception types from deep inside
                raise ExportError(f"torch.onnx.export ({opts.exporter}) failed on the {name} tower of {model_class}: "
                                  f"{root_cause(exc)}") from None
            seconds += time.perf_counter() - start
            _check_onnx(path)
            progress.step(f"validating the {name} tower against eager PyTorch")
            report = run_reference_cases(path, references[name], atol=plan.atol, spec=spec)
            check(report, what=f"the {name} tower's {opts.exporter} export")
            reports.append(report)
            graphs.append(Graph(name, path.name, ios[name].inputs, ios[name].outputs,
                                Validation.from_json(report.to_json())))
        del model
        save_reference(tmp, [c for name in spec.graphs for c in references[name]])
        if loaded.tokenizer is not None:
            loaded.tokenizer.save_pretrained(tmp)
        spec.save_extras(loaded.source_folder, tmp)
        validation = Validation.from_json(ComparisonReport(tuple(i for r in reports for i in r.items)).to_json())
        variant = Variant(name="model", file=graphs[0].file, stage="export",
                          options=BuildOptions.from_json({"exporter": opts.exporter, "opset": opts.opset,
                                                          "external_data": external}),
                          size_bytes=sum(model_bytes(tmp / g.file) for g in graphs), seconds=round(seconds, 3),
                          validation=validation, graphs=tuple(graphs))
        manifest = new_manifest(
            source=loaded.source, family=spec.family, model_type=model_type, task=task,
            ort_model_type=spec.ort_model_type, fusion=fusion, io=whole,
            export={"exporter": opts.exporter, "opset": opts.opset, "attn_implementation": opts.attn_implementation,
                    "dummy_shape": list(spec.case_shape(dummy_case)),
                    "validation_shapes": [c.label() for c in cases], "tokenizer": loaded.tokenizer is not None,
                    "graphs": list(spec.graphs)},
            text=text, atol=opts.atol or spec.atol, variant=variant, shapes=None,
            model_config=normalized.to_json())
        Artifact(tmp, manifest).save(manifest)
    return Artifact.open(output)

