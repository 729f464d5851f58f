"""Predictors with one interface, made by backend name from an exported folder.

Which backends exist, what each runs and which factory makes its predictor is the table in
:mod:`torchship.backends`; this module only looks the backend up, checks that the folder and the
family can run it, and calls the factory.
"""

from __future__ import annotations

from dataclasses import dataclass

from torchship.artifact import Artifact
from torchship.errors import InputError
from torchship.exporters.spec import family_of
from torchship.runtimes.base import Predictor
from torchship.backends import BACKENDS, Backend, backend, backend_variants, parse_backends  # noqa: F401


@dataclass(frozen=True)
class RuntimeOptions:
    threads: int | None = None
    spin: str = "run"  # ORT worker threads: see torchship._ort.spin_entries
    device: str = "cpu"
    reference_model: str | None = None  # checkpoint for the torch backends; None: the export's source


def require_variant(artifact: Artifact, record: Backend) -> str:
    """The first of the backend's variants the folder holds, or an error that says which command makes it."""
    manifest = artifact.manifest
    for name in record.variants:
        if name in manifest.variants:
            return name
    name = record.variants[0]
    if name in manifest.skipped:
        step = record.make.split(" {folder}")[0]
        raise InputError(f"{artifact.folder} has no {name!r} variant for backend {record.name}: {step} skipped it "
                         f"({manifest.skipped[name]}); choose another backend")
    raise InputError(f"{artifact.folder} has no {name!r} variant for backend {record.name}; run: "
                     f"{record.make_command(artifact.folder)}")


def check_backend(artifact: Artifact, name: str) -> Backend:
    """The table's record of backend ``name``, refused when the folder's family cannot run it."""
    record = backend(name)
    problem = family_of(artifact.manifest).backend_problem(record)
    if problem:
        raise InputError(f"{artifact.folder}: {problem}")
    return record


def create_predictor(artifact: Artifact, name: str, options: RuntimeOptions = RuntimeOptions()) -> Predictor:
    """The predictor of backend ``name`` for ``artifact``; nothing is loaded until it is activated."""
    record = check_backend(artifact, name)
    return record.factory()(artifact, record, options)


def source_model_loader(artifact: Artifact, override: str | None = None):
    """A function that loads the export's source checkpoint (or ``override``) the way a PyTorch user
    would: the family's model class, default attention, eval mode."""
    from torchship import loading

    manifest = artifact.manifest
    source = override or manifest.source.get("resolved", "")
    if source.startswith("hub:"):
        source = source[4:]
    if not source or source == "python object":
        raise InputError(f"{artifact.folder} was exported from a Python object; pass the checkpoint "
                         "for the PyTorch backends with --reference-model")
    spec = family_of(manifest)

    def load():
        _, ref = loading.peek(loading.resolve(source))
        return spec.load_model(ref, spec.load_config(ref), manifest.task)

    return load
