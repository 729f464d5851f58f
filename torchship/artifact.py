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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from torchship import backends as backends_table
from torchship._fs import MANIFEST_NAME, staged_file, write_json_atomic
from torchship.errors import ArtifactError, InputError
from torchship.external_data import data_file_name
from torchship.tensors import ModelIO, TensorSpec

FORMAT_VERSION = 1
REFERENCE_NAME = "reference.npz"
# A torchship auto output: its summary, and the torchship folder inside it (torchship.auto writes both).
AUTO_SUMMARY, AUTO_MODEL_DIR = "summary.json", "model"
_PASS = ("pass a folder that torchship export or torchship auto wrote "
         "(make one with: torchship export --model MODEL --output DIR)")


@dataclass(frozen=True)
class Variant:
    """One ONNX model in the folder and how it was made."""

    name: str
    file: str
    stage: str  # "export", "ort-graph", "transformer-fusion"
    options: dict = field(default_factory=dict)
    size_bytes: int = 0
    seconds: float = 0.0
    validation: dict | None = None
    fusion: dict | None = None
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict:
        data = asdict(self)
        data["notes"] = list(self.notes)
        return data

    @classmethod
    def from_json(cls, data: dict) -> "Variant":
        return cls(**{**data, "notes": tuple(data.get("notes", ()))})


@dataclass(frozen=True)
class Manifest:
    source: dict
    family: str
    model_type: str
    task: str
    ort_model_type: str
    num_heads: int
    hidden_size: int
    num_layers: int
    inputs: list
    outputs: list
    export: dict
    text: dict
    versions: dict
    atol: float
    variants: dict[str, Variant]
    skipped: dict[str, str] = field(default_factory=dict)  # variant name -> why it could not be made
    shapes: dict | None = None  # the shape config resolved against the model (torchship.shapes)
    quantization: dict | None = None  # int8 candidates tried by torchship quantize, with their numbers
    model_config: dict | None = None  # the family's normalized view of the config (exporters.spec.NormalizedConfig)
    dispatch: dict | None = None  # fp32 variants timed per shape by torchship optimize, winner per range (below)
    format: int = FORMAT_VERSION

    def to_json(self) -> dict:
        data = asdict(self)
        data["variants"] = {k: v.to_json() for k, v in self.variants.items()}
        return {"format": self.format, **{k: v for k, v in data.items() if k != "format"}}

    @classmethod
    def from_json(cls, data: dict) -> "Manifest":
        variants = {k: Variant.from_json(v) for k, v in data["variants"].items()}
        return cls(**{**data, "variants": variants})

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
                    num_heads=int(fusion["num_heads"]), hidden_size=int(fusion["hidden_size"]),
                    num_layers=int(fusion["num_layers"]), inputs=[t.to_json() for t in io.inputs],
                    outputs=[t.to_json() for t in io.outputs], export=export, text=text,
                    versions=library_versions(), atol=atol, variants={variant.name: variant}, shapes=shapes,
                    model_config=model_config)


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
        path = self.folder / self.variant(name).file
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
            if variant is None or not (variant.validation or {}).get("passed"):
                return False
            return (variant.fusion or {}).get("attention_fused", True)

        valid = [n for n in backends_table.preference_order() if usable(n)]
        return valid[0] if valid else "model"

    def measured_variant(self, sizes: dict[str, int] | None = None) -> str:
        """The one variant for callers that need a single file: the dispatch table's choice at ``sizes``
        (e.g. the shape config's use shape), else the variant that won the most measured shapes; without a
        table, ``best_variant``."""
        table = self.manifest.dispatch
        if not table or not table.get("ranges"):
            return self.best_variant()
        if sizes is not None and "batch" in sizes and "sequence" in sizes:
            return dispatch_variant(table, sizes["batch"], sizes["sequence"])
        return most_wins(table)

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


def dispatch_variant(table: dict, batch: int, sequence: int) -> str:
    """The variant a dispatch table names for a call of ``batch`` x ``sequence``: the range that holds it.
    Ranges are ``{"batch": [lo, hi], "sequence": [lo, hi], "variant": name}`` with ``hi`` None for no upper
    bound; together they cover every shape (torchship.optimizers.dispatch writes them). A hand-edited table
    with a hole gives the overall winner, never an error mid-request."""
    return dispatch_choice(table, batch, sequence)[0]


def range_choice(r: dict) -> tuple[str, str]:
    """(variant, session tuning) of one range of a dispatch table (tables before version 2 name no tuning)."""
    return r["variant"], r.get("session", "default")


def dispatch_choice(table: dict, batch: int, sequence: int) -> tuple[str, str]:
    """(variant, session tuning, _ort.SESSION_TUNINGS) a dispatch table names for ``batch`` x ``sequence``."""
    for r in table["ranges"]:
        (b_lo, b_hi), (s_lo, s_hi) = r["batch"], r["sequence"]
        if b_lo <= batch <= (b_hi or batch) and s_lo <= sequence <= (s_hi or sequence):
            return range_choice(r)
    return most_wins(table), "default"


def most_wins(table: dict) -> str:
    """The variant that won the most measured shapes (ties: the one listed first among the candidates)."""
    wins = [s["winner"] for s in table["shapes"]]
    return max(table["candidates"], key=lambda name: (wins.count(name), -list(table["candidates"]).index(name)))


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
