"""Predictors with one interface, made by backend name from an exported folder.

Which backends exist, what each runs and which factory makes its predictor is the table in
:mod:`torchship.backends`; this module only looks the backend up, checks that the folder and the
family can run it, and calls the factory.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

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
    graph: str | None = None  # a variant of several graphs (image-text towers): the one to run


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


def create_predictor(artifact: Artifact, name: str, options: RuntimeOptions = RuntimeOptions(), *,
                     graph: str | None = None) -> Predictor:
    """The predictor of backend ``name`` for ``artifact``; nothing is loaded until it is activated. A folder whose
    export has several graphs (an image-text model's ``text`` and ``vision`` towers) runs one: ``graph`` names it."""
    record = check_backend(artifact, name)
    factory = record.factory()
    graph = graph or options.graph
    names = graph_names(artifact)
    if graph is None and len(names) > 1:
        raise InputError(f"{artifact.folder} holds {len(names)} graphs ({', '.join(names)}); this runs a folder of "
                         "one graph (torchship predict runs both; from Python, create_predictor(..., graph=NAME))")
    if graph is not None:
        if graph not in names:
            raise InputError(f"{artifact.folder} has no graph {graph!r}; it has {', '.join(names)}")
        if len(names) > 1 and not getattr(factory, "runs_graphs", False):
            raise InputError(f"backend {name} runs a folder of one graph; {artifact.folder} holds {', '.join(names)}: "
                             "use ort or torch")
        options = replace(options, graph=graph if len(names) > 1 else None)
    return factory(artifact, record, options)


def graph_names(artifact: Artifact) -> tuple[str, ...]:
    """The graphs of the folder's export (one, ``model``, for most folders)."""
    variant = artifact.manifest.variants.get("model") or next(iter(artifact.manifest.variants.values()))
    return tuple(g.name for g in variant.all_graphs)


def graph_io(artifact: Artifact, variant: str, graph: str | None):
    """The inputs and outputs of one graph of a variant (None: the folder's one graph, the manifest's)."""
    if graph is None:
        return artifact.manifest.io()
    from torchship.tensors import ModelIO

    found = artifact.variant(variant).graph(graph)
    return ModelIO(found.inputs, found.outputs)


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
