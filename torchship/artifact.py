"""The output folder every stage reads and writes: ONNX files, tokenizer, config, manifest.

``torchship.json`` (the manifest) records what the folder holds: the source checkpoint, inputs and
outputs with their dynamic axes, the export settings, every model variant with its validation
numbers and fusion counts, and library versions. ``reference.npz`` holds the validation inputs and
the eager PyTorch outputs for them, so an optimization made later (or on another machine) is still
validated against PyTorch without loading PyTorch.
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from torchship import backends as backends_table
from torchship._fs import MANIFEST_NAME, staged_file, write_json_atomic
from torchship.dispatch_table import DispatchTable
from torchship.errors import ArtifactError, InputError
from torchship.external_data import data_file_name
from torchship.manifest_sections import ONE, BuildOptions, FusionRecord, Graph, QuantizationRecord, Validation
from torchship.tensors import ModelIO, TensorSpec

FORMAT_VERSION = 1
REFERENCE_NAME = "reference.npz"
# A torchship auto output: its summary, and the torchship folder inside it (torchship.auto writes both).
AUTO_SUMMARY, AUTO_MODEL_DIR = "summary.json", "model"
_PASS = ("pass a folder that torchship export or torchship auto wrote "
         "(make one with: torchship export --model MODEL --output DIR)")


@dataclass(frozen=True)
class Variant:
    """One model variant in the folder and how it was made. Most are one ONNX file (``file``); a variant of several
    graphs (an image-text model's two towers, an encoder and a decoder) lists them in ``graphs``, each with its
    own file, inputs, outputs and validation, and ``file`` names the first."""

    name: str
    file: str
    stage: str  # "export", "ort-graph", "transformer-fusion"
    options: BuildOptions = field(default_factory=BuildOptions)
    size_bytes: int = 0
    seconds: float = 0.0
    validation: Validation | None = None
    fusion: FusionRecord | None = None
    notes: tuple[str, ...] = ()
    graphs: tuple[Graph, ...] = ()  # empty: the one graph in ``file``

    def graph(self, name: str = ONE) -> Graph:
        """Graph ``name`` of the variant; a one-file variant's graph is ``ONE``, with the manifest's inputs and
        outputs (``Manifest.io``)."""
        found = next((g for g in self.all_graphs if g.name == name), None)
        if found is None and name == ONE:  # a one-graph step (optimize, quantize) on a folder of several
            raise InputError(f"variant {self.name!r} holds {len(self.graphs)} graphs "
                             f"({', '.join(g.name for g in self.graphs)}); this step works on a folder of one graph "
                             "(predict and the ort and torch backends run each graph)")
        if found is None:
            raise InputError(f"variant {self.name!r} has no graph {name!r}; it has "
                             f"{', '.join(g.name for g in self.all_graphs)}")
        return found

    @property
    def all_graphs(self) -> tuple[Graph, ...]:
        return self.graphs or (Graph(ONE, self.file, validation=self.validation),)

    def to_json(self) -> dict:
        return {"name": self.name, "file": self.file, "stage": self.stage, "options": self.options.to_json(),
                "size_bytes": self.size_bytes, "seconds": self.seconds,
                "validation": self.validation.to_json() if self.validation else None,
                "fusion": self.fusion.to_json() if self.fusion else None, "notes": list(self.notes),
                **({"graphs": [g.to_json() for g in self.graphs]} if self.graphs else {})}

    @classmethod
    def from_json(cls, data: dict) -> "Variant":
        return cls(name=data["name"], file=data["file"], stage=data["stage"],
                   options=BuildOptions.from_json(data.get("options") or {}), size_bytes=data.get("size_bytes", 0),
                   seconds=data.get("seconds", 0.0),
                   validation=Validation.from_json(data["validation"]) if data.get("validation") else None,
                   fusion=FusionRecord.from_json(data["fusion"]) if data.get("fusion") else None,
                   notes=tuple(data.get("notes", ())), graphs=tuple(Graph.from_json(g) for g in data.get("graphs", ())))


@dataclass(frozen=True)
class FusionSettings:
    """ORT's transformer optimizer's heads and width, and the attention fusions a complete fusion gives (the
    spec's ``fusion_settings``). For text families they are the normalized config's; the manifest writes them
    apart only where they differ (a UNet counts its attention modules)."""

    num_heads: int = 0
    hidden_size: int = 0
    num_layers: int = 0

    @classmethod
    def of(cls, data: dict | None) -> "FusionSettings":
        return cls(*(int((data or {}).get(k) or 0) for k in _FUSION_KEYS))


_FUSION_KEYS = ("num_heads", "hidden_size", "num_layers")


@dataclass(frozen=True)
class Manifest:
    source: dict
    family: str
    model_type: str
    task: str
    ort_model_type: str
    inputs: list
    outputs: list
    export: dict
    text: dict
    versions: dict
    atol: float
    variants: dict[str, Variant]
    skipped: dict[str, str] = field(default_factory=dict)  # variant name -> why it could not be made
    shapes: dict | None = None  # the shape config resolved against the model (torchship.shapes)
    quantization: QuantizationRecord | None = None  # int8 candidates tried by torchship quantize, with their numbers
    model_config: dict | None = None  # the family's normalized view of the config (exporters.spec.NormalizedConfig)
    dispatch: DispatchTable | None = None  # fp32 variants timed per shape by torchship optimize, winner per range
    fusion_settings: FusionSettings | None = None  # None: the model config's (``fusion``)
    format: int = FORMAT_VERSION

    @property
    def fusion(self) -> FusionSettings:
        """Heads, width and layers for ORT's transformer optimizer: written apart where they differ from the model
        config's, else read from it."""
        return self.fusion_settings or FusionSettings.of(self.model_config)

    @property
    def num_heads(self) -> int:
        return self.fusion.num_heads

    @property
    def hidden_size(self) -> int:
        return self.fusion.hidden_size

    @property
    def num_layers(self) -> int:
        return self.fusion.num_layers

    def to_json(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("format", "fusion_settings")}
        return {"format": self.format, **data, "variants": {k: v.to_json() for k, v in self.variants.items()},
                "quantization": self.quantization.to_json() if self.quantization else None,
                "dispatch": self.dispatch.to_json() if self.dispatch else None,
                **(asdict(self.fusion_settings) if self.fusion_settings else {})}

    @classmethod
    def from_json(cls, data: dict) -> "Manifest":
        """Also a manifest of earlier versions: heads, width and layers at the top (``fusion_settings``)."""
        rest = {k: v for k, v in data.items() if k not in _FUSION_KEYS}
        written = FusionSettings.of(data) if any(k in data for k in _FUSION_KEYS) else None
        return cls(**{**rest, "variants": {k: Variant.from_json(v) for k, v in data["variants"].items()},
                      "quantization": QuantizationRecord.from_json(data["quantization"])
                      if data.get("quantization") else None,
                      "dispatch": DispatchTable.from_json(data["dispatch"]) if data.get("dispatch") else None,
                      "fusion_settings": _apart(written, data.get("model_config"))})

    def with_variant(self, variant: Variant) -> "Manifest":
        skipped = {k: v for k, v in self.skipped.items() if k != variant.name}
        return replace(self, variants={**self.variants, variant.name: variant}, skipped=skipped)

    def with_skipped(self, name: str, reason: str) -> "Manifest":
        variants = {k: v for k, v in self.variants.items() if k != name}
        return replace(self, variants=variants, skipped={**self.skipped, name: reason})

    def io(self) -> ModelIO:
        return ModelIO(tuple(TensorSpec.from_json(t) for t in self.inputs),
                       tuple(TensorSpec.from_json(t) for t in self.outputs))

    def resolved_shapes(self):
        """The shape config given at export, resolved (None when there was none)."""
        from torchship.shapes import ResolvedShapes

        return ResolvedShapes.from_json(self.shapes) if self.shapes else None

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(i["name"] for i in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o["name"] for o in self.outputs)


@dataclass(frozen=True)
class ReferenceCase:
    label: str
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]


def new_manifest(*, source: dict, family: str, model_type: str, task: str, ort_model_type: str, fusion: dict,
                 io: ModelIO, export: dict, text: dict, atol: float, variant: Variant, shapes: dict | None,
                 model_config: dict | None) -> Manifest:
    """The manifest of a new folder holding one variant (an export, or an imported ONNX file)."""
    return Manifest(source=source, family=family, model_type=model_type, task=task, ort_model_type=ort_model_type,
                    inputs=[t.to_json() for t in io.inputs], outputs=[t.to_json() for t in io.outputs],
                    export=export, text=text, versions=library_versions(), atol=atol,
                    variants={variant.name: variant}, shapes=shapes, model_config=model_config,
                    fusion_settings=_apart(FusionSettings.of(fusion), model_config))


def _apart(settings: FusionSettings | None, model_config: dict | None) -> FusionSettings | None:
    """``settings`` where the model config does not already say them, else None (one place for each fact)."""
    return None if settings is None or (model_config and settings == FusionSettings.of(model_config)) else settings


def save_reference(folder: Path, cases: list[ReferenceCase]) -> None:
    arrays = {}
    for i, case in enumerate(cases):
        arrays[f"{i}/label"] = np.array(case.label)
        for k, v in case.inputs.items():
            arrays[f"{i}/in/{k}"] = v
        for k, v in case.outputs.items():
            arrays[f"{i}/out/{k}"] = v
    with staged_file(Path(folder) / REFERENCE_NAME) as tmp:
        with open(tmp, "wb") as fh:  # a file object: numpy would append .npz to a path
            np.savez_compressed(fh, **arrays)


def load_reference(folder: Path) -> list[ReferenceCase]:
    path = Path(folder) / REFERENCE_NAME
    if not path.is_file():
        raise ArtifactError(f"{path} is missing; re-run torchship export to recreate the folder")
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = list(data.keys())
            n = len({k.split("/")[0] for k in keys})
            cases = []
            for i in range(n):
                ins = {k.split("/", 2)[2]: data[k] for k in keys if k.startswith(f"{i}/in/")}
                outs = {k.split("/", 2)[2]: data[k] for k in keys if k.startswith(f"{i}/out/")}
                cases.append(ReferenceCase(str(data[f"{i}/label"]), ins, outs))
    except (OSError, ValueError, KeyError) as exc:
        raise ArtifactError(f"{path} is corrupted ({exc}); re-run torchship export") from None
    return cases


class Artifact:
    """A torchship output folder: manifest plus files, checked on open."""

    def __init__(self, folder: Path, manifest: Manifest):
        self.folder = Path(folder)
        self.manifest = manifest
        self.auto_choice: str | None = None  # opened through a torchship auto output: the backend auto chose

    @classmethod
    def open(cls, folder: str | Path) -> "Artifact":
        """The torchship folder the user passed: an export folder, or a torchship auto output (its model/), the
        same for every command; anything else is one line that says what to pass."""
        given = Path(folder)
        folder, auto_choice = resolve_folder(given)
        path = folder / MANIFEST_NAME
        try:
            manifest = Manifest.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(f"{path} is corrupted ({type(exc).__name__}: {exc}); re-run torchship export") from None
        if manifest.format != FORMAT_VERSION:
            raise ArtifactError(f"{path} has format {manifest.format}; this torchship reads format {FORMAT_VERSION}")
        artifact = cls(folder, manifest)
        artifact.auto_choice = auto_choice
        return artifact

    def variant(self, name: str) -> Variant:
        if name not in self.manifest.variants:
            raise InputError(f"{self.folder} has no variant {name!r}; it has {', '.join(self.manifest.variants)}")
        return self.manifest.variants[name]

    def path_of(self, name: str) -> Path:
        return self.graph_path(name)

    def graph_path(self, name: str, graph: str = ONE) -> Path:
        """The file of graph ``graph`` of variant ``name`` (a one-file variant's is ``ONE``), checked."""
        path = self.folder / self.variant(name).graph(graph).file
        if not path.is_file():
            raise ArtifactError(f"{path} is missing; make it again with: "
                                f"{backends_table.remake_command(name, self.folder)}")
        return path

    def variant_for(self, backend: str) -> Variant | None:
        """The variant backend ``backend`` runs in this folder (the table's first present), or None."""
        return next((self.manifest.variants[n] for n in backends_table.backend_variants(backend)
                     if n in self.manifest.variants), None)

    def best_variant(self) -> str:
        """The most optimized validated variant, in the backend table's preference order. A transformer-fused
        variant whose attention did not fuse is passed over: its rewritten graph measured slower than ORT's
        own level ``all`` on every family where nothing fused (scripts/family_benchmark.py)."""
        def usable(name: str) -> bool:
            variant = self.manifest.variants.get(name)
            if variant is None or not variant.validation or not variant.validation.passed:
                return False
            return variant.fusion is None or variant.fusion.attention_fused is not False

        valid = [n for n in backends_table.preference_order() if usable(n)]
        return valid[0] if valid else "model"

    def measured_variant(self, sizes: dict[str, int] | None = None) -> str:
        """The one variant for callers that need a single file: the dispatch table's choice at ``sizes``
        (e.g. the shape config's use shape), else the variant that won the most measured shapes; without a
        table, ``best_variant``."""
        table = self.manifest.dispatch
        if not table or not table.ranges:
            return self.best_variant()
        if sizes is not None and "batch" in sizes and "sequence" in sizes:
            return table.variant_at(sizes["batch"], sizes["sequence"])
        return table.most_wins()

    def save(self, manifest: Manifest) -> None:
        write_json_atomic(self.folder / MANIFEST_NAME, manifest.to_json())
        self.manifest = manifest


def resolve_folder(folder: str | Path) -> tuple[Path, str | None]:
    """(the torchship folder, the backend torchship auto chose or None) for what a user passed: a folder with a
    manifest, or a torchship auto output (AUTO_SUMMARY beside AUTO_MODEL_DIR/, the folder auto exported into).
    Every command opens folders through here (``Artifact.open``), so all accept the same ones and refuse the
    rest with the same line."""
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"folder {folder} does not exist; {_PASS}")
    if not folder.is_dir():
        raise InputError(f"{folder} is a file; {_PASS}")
    if (folder / MANIFEST_NAME).is_file():
        return folder, None
    inner = folder / AUTO_MODEL_DIR
    if (inner / MANIFEST_NAME).is_file():
        summary = folder / AUTO_SUMMARY
        try:  # an auto run stopped before its summary still left a whole model folder
            chosen = json.loads(summary.read_text(encoding="utf-8")).get("chosen") if summary.is_file() else None
        except (OSError, ValueError, AttributeError):
            raise ArtifactError(f"{summary} is corrupted; re-run torchship auto, or pass {inner}") from None
        return inner, chosen if isinstance(chosen, str) else None
    raise ArtifactError(f"{folder} has no {MANIFEST_NAME}, so torchship did not write it; {_PASS}")


def model_bytes(path: Path) -> int:
    """Size of an ONNX model on disk: the graph file plus its external data file, if any."""
    path = Path(path)
    data = path.with_name(data_file_name(path))
    return path.stat().st_size + (data.stat().st_size if data.is_file() else 0)


def library_versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("torchship", "torch", "transformers", "diffusers", "onnx", "onnxruntime", "onnxscript", "numpy"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    return out
