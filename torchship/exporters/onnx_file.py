"""An existing ONNX file as a torchship folder: no Hugging Face checkpoint, no PyTorch.

``import_onnx`` copies the file (and its external data) into a folder with a manifest, so that
optimize, quantize, the runtimes, bench and auto work on it as on an export. The inputs and outputs
come from the graph: a dimension's name (``dim_param``) is its axis name, an unnamed dynamic
dimension is called ``<input>_<position>``. A shape config is required: it gives every named axis
its min, use and max sizes. The reference outputs are the original file's own, run by ONNX Runtime
at those three shapes; there is no eager PyTorch to compare with.

Inputs are made realistic by name and graph: integer inputs that feed an embedding table (a Gather
on an initializer) get ids below that table's size; ``*mask*`` inputs are ones, ``token_type*``
zeros, ``position*`` counts up; float inputs are standard normal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from torchship.errors import InputError
from torchship.exporters.spec import FORWARD, FamilyGroup, ModelIO, NormalizedConfig, SpecDefaults, TensorSpec, register

MODEL_TYPE = "onnx"
CONFIG_NAME = "onnx_inputs.json"
_DTYPES = {1: "float32", 10: "float16", 11: "float64", 6: "int32", 7: "int64", 9: "bool", 2: "uint8", 3: "int8"}


@dataclass(frozen=True)
class NamedShape:
    """Sizes by axis name; ``batch`` and ``sequence`` for reports when the graph has such axes."""

    sizes: tuple[tuple[str, int], ...]

    @property
    def batch(self) -> int:
        return dict(self.sizes).get("batch", 1)

    @property
    def sequence(self) -> int:
        return dict(self.sizes).get("sequence", 0)

    def label(self) -> str:
        return " x ".join(f"{k} {v}" for k, v in self.sizes)


ONNX_FILES = FamilyGroup("onnx", "ONNX files", "a model imported from an ONNX file", "torchship auto")


class OnnxSpec(SpecDefaults):
    """The spec of a model that arrived as an ONNX file."""

    family = "onnx"
    group = ONNX_FILES
    phases = (FORWARD,)
    has_checkpoint = False
    default_exporter = "none"
    fusion_hint = ""
    model_types = (MODEL_TYPE,)
    tasks = ("onnx",)
    ort_model_type = ""
    atol = 1e-4
    dummy_case = NamedShape(())
    validation_cases = ()
    bench_inputs = "ids below the embedding table size, masks of ones, floats N(0, 1)"

    def default_task(self, config) -> str:
        return "onnx"

    def normalized(self, config) -> NormalizedConfig:
        return NormalizedConfig()

    def backend_problem(self, backend) -> str | None:
        if backend.runtime == "pytorch":
            return "a model imported from an ONNX file has no PyTorch checkpoint to run"
        return super().backend_problem(backend)

    def text_settings(self, folder, config, tokenizer, task: str) -> dict:
        return {}

    def load_saved_config(self, folder: Path) -> dict:
        path = Path(folder) / CONFIG_NAME
        return json.loads(path.read_text()) if path.is_file() else {"ranges": {}, "use": {}}

    def case_for(self, sizes: dict[str, int], config) -> NamedShape:
        return NamedShape(tuple(sorted(sizes.items())))

    def case_shape(self, case: NamedShape) -> tuple[int, ...]:
        return tuple(v for _, v in case.sizes)

    def bench_sizes(self, config) -> list[dict[str, int]]:
        return [dict(config.get("use", {}))]

    def fusion_settings(self, model) -> dict:
        return {"num_heads": 0, "hidden_size": 0, "num_layers": 0}

    def compared_positions(self, feeds) -> dict:
        return {}

    def sample_inputs(self, config, io: ModelIO, case: NamedShape, *, seed: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        sizes = dict(case.sizes)
        feeds = {}
        for spec in io.inputs:
            shape = tuple(a if isinstance(a, int) else sizes[a] for a in spec.axes)
            feeds[spec.name] = _sample(spec.name, spec.dtype, shape, config.get("ranges", {}).get(spec.name), rng)
        return feeds


def _sample(name: str, dtype: str, shape: tuple[int, ...], id_range, rng) -> np.ndarray:
    lowered = name.lower()
    if dtype == "bool":
        return np.ones(shape, dtype=bool)
    if np.issubdtype(np.dtype(dtype), np.integer):
        if "mask" in lowered:
            return np.ones(shape, dtype=dtype)
        if "token_type" in lowered or "segment" in lowered:
            return np.zeros(shape, dtype=dtype)
        if "position" in lowered and shape:
            return np.broadcast_to(np.arange(shape[-1]), shape).astype(dtype)
        high = int(id_range) if id_range else 100
        return rng.integers(min(high - 1, 5), high, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


register(OnnxSpec())


def graph_io(model) -> ModelIO:
    """Inputs (initializers excluded) and outputs of a graph, with named axes."""
    inits = {i.name for i in model.graph.initializer}

    def spec(value) -> TensorSpec:
        t = value.type.tensor_type
        if t.elem_type not in _DTYPES:
            raise InputError(f"ONNX input or output {value.name!r} has element type {t.elem_type}, which "
                             "torchship cannot feed; supported: " + ", ".join(sorted(set(_DTYPES.values()))))
        axes = []
        for i, d in enumerate(t.shape.dim):
            axes.append(d.dim_param if d.dim_param else d.dim_value if d.dim_value > 0 else f"{value.name}_{i}")
        return TensorSpec(value.name, _DTYPES[t.elem_type], tuple(axes))

    return ModelIO(tuple(spec(v) for v in model.graph.input if v.name not in inits),
                   tuple(spec(v) for v in model.graph.output))


def _id_ranges(model, io: ModelIO) -> dict[str, int]:
    """For each integer input that a Gather indexes an initializer with: the initializer's first dim."""
    sizes = {i.name: list(i.dims) for i in model.graph.initializer}
    int_inputs = {t.name for t in io.inputs if np.issubdtype(np.dtype(t.dtype), np.integer)}
    ranges = {}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] in int_inputs \
                and node.input[0] in sizes and sizes[node.input[0]]:
            ranges[node.input[1]] = min(ranges.get(node.input[1], 1 << 62), int(sizes[node.input[0]][0]))
    return ranges


def import_onnx(path: str | Path, output: str | Path, shape_config, *, progress=None):
    """Make a torchship folder from the ONNX file at ``path``, validated at the config's min/use/max."""
    from torchship import _progress
    from torchship._fs import check_output_dir, staged_dir
    from torchship._ort import make_session
    from torchship.artifact import Artifact, ReferenceCase, Variant, model_bytes, new_manifest, save_reference
    from torchship.manifest_sections import BuildOptions, Validation
    from torchship.external_data import copy_model
    from torchship.onnx_io import load_onnx
    from torchship.shapes import resolve
    from torchship.validation import check, run_reference_cases

    progress = progress or _progress.SILENT
    path, output = Path(path), Path(output)
    if not path.is_file():
        raise InputError(f"ONNX file {path} does not exist")
    if shape_config is None:
        raise InputError(f"{path.name} is an ONNX file: give a shape config (--config) with min/use/max sizes "
                         "for its inputs, since there is no model config to take them from")
    make_session(path)  # refuses data files outside its folder, then a corrupted file, with the usual messages
    graph = load_onnx(path)
    io = graph_io(graph)
    resolved = resolve(shape_config, io)
    config = {"ranges": _id_ranges(graph, io), "use": resolved.sizes("use")}
    spec = OnnxSpec()
    check_output_dir(output)
    with staged_dir(output) as tmp:
        progress.step(f"copying {path.name} (and its data) into the folder")
        copy_model(path, tmp / "model.onnx", "auto")
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2))
        progress.step("reference outputs: the original file in ONNX Runtime at the min, use and max shapes")
        session = make_session(path)
        names = [o.name for o in session.get_outputs()]
        cases = []
        for i, which in enumerate(("min", "use", "max")):
            case = spec.case_for(resolved.sizes(which), config)
            feeds = spec.sample_inputs(config, io, case, seed=100 + i)
            cases.append(ReferenceCase(f"{which}: {case.label()}", feeds, dict(zip(names, session.run(names, feeds)))))
        save_reference(tmp, cases)
        report = run_reference_cases(tmp / "model.onnx", cases, atol=spec.atol, spec=spec)
        check(report, what="the imported copy")
        opset = max((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), default=0)
        variant = Variant(name="model", file="model.onnx", stage="import", options=BuildOptions(source=str(path)),
                          size_bytes=model_bytes(tmp / "model.onnx"), validation=Validation.from_json(report.to_json()))
        manifest = new_manifest(
            source={"model": str(path), "resolved": "onnx file", "onnx_file": str(path.resolve())},
            family="onnx", model_type=MODEL_TYPE, task="onnx", ort_model_type="",
            fusion=spec.fusion_settings(None), io=io,
            export={"exporter": "onnx file", "opset": opset, "tokenizer": False,
                    "validation_shapes": [c.label for c in cases]},
            text={}, atol=spec.atol, variant=variant, shapes=resolved.to_json(),
            model_config=spec.normalized(config).to_json())
        Artifact(tmp, manifest).save(manifest)
    return Artifact.open(output)
