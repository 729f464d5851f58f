"""ONNX external data, one way for every family: when, where, and what a folder may point to.

A protobuf message cannot exceed 2 GiB, so large models keep their weights beside the graph. The
rules torchship follows everywhere (export, ORT graph levels, transformer fusion):

- **When**: a model whose initializers total more than :data:`THRESHOLD_BYTES` is written with
  external data (ORT's optimizers can grow a model, so the limit leaves room); ``always`` / ``never``
  can be forced.
- **Naming**: one data file per model, named after it: ``model.onnx`` -> ``model.onnx.data``.
  Tensors under 1 KiB stay inside the graph. (TorchScript's exporter writes one file per tensor,
  hundreds for a UNet; torchship gathers them into the one file.)
- **Relocation**: locations are plain file names, relative to the model file, so a folder can be
  moved or copied as a whole and still loads.
- **Containment**: before any ONNX file is loaded, the locations it names are checked: an absolute
  path, a path that leaves the model's folder (``..``, or a link pointing out) or a missing file is
  refused with a clear error, never read.
"""

from __future__ import annotations

import os
from pathlib import Path

from torchship._fs import scratch_dir, staged_file
from torchship.errors import ArtifactError, InputError
from torchship.onnx_io import load_onnx

THRESHOLD_BYTES = 1 << 30  # 1 GiB of initializers: half the protobuf limit, room for optimizer growth
INLINE_BELOW_BYTES = 1024  # tensors smaller than this stay in the graph
MODES = ("auto", "always", "never")
PROTOBUF_LIMIT = (1 << 31) - 1


def data_file_name(model_path: Path) -> str:
    return Path(model_path).name + ".data"


def _tensors(graph):
    """Every TensorProto of a graph: initializers, tensor attributes, recursing into subgraphs."""
    import onnx

    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.TENSORS:
                yield from attr.tensors
            elif attr.type == onnx.AttributeProto.GRAPH:
                yield from _tensors(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _tensors(g)


def _location(tensor) -> str | None:
    import onnx

    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return None
    for entry in tensor.external_data:
        if entry.key == "location":
            return entry.value
    return ""


def external_locations(model) -> list[str]:
    """The distinct external data locations a ModelProto names, in order of appearance."""
    seen: list[str] = []
    for tensor in _tensors(model.graph):
        loc = _location(tensor)
        if loc is not None and loc not in seen:
            seen.append(loc)
    return seen


def initializer_bytes(model) -> int:
    """Bytes of tensor data in a ModelProto, from each tensor's dims and type, so it is the same whether
    the data is inline, loaded, or still external (exporters do not always record a "length")."""
    import numpy as np
    import onnx

    total = 0
    for tensor in _tensors(model.graph):
        if tensor.data_type == onnx.TensorProto.STRING:
            total += tensor.ByteSize()
        else:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
            total += int(np.prod(tensor.dims, dtype=np.int64)) * itemsize
    return total


def check_locations(model_path: Path, locations: list[str]) -> None:
    """Refuse locations that are absolute, leave the model's folder, or are missing."""
    model_path = Path(model_path)
    folder = model_path.parent.resolve()
    for loc in locations:
        if not loc:
            raise ArtifactError(f"{model_path} has a tensor marked external without a location; re-export it")
        if os.path.isabs(loc) or Path(loc).drive:
            raise ArtifactError(f"{model_path} reads external data from the absolute path {loc!r}; torchship only "
                                "loads data files inside the model's own folder (re-export, or re-save the model "
                                "with a relative location)")
        target = (folder / loc).resolve()
        if folder != target and folder not in target.parents:
            raise ArtifactError(f"{model_path} reads external data from {loc!r}, which is outside its folder "
                                f"{folder}; torchship refuses to load it (keep the data file beside the model)")
        if not target.is_file():
            raise ArtifactError(f"{model_path} needs its external data file {loc!r}, which is missing; copy or "
                                "move the whole folder, not the .onnx file alone")


def check_file(model_path: Path, *, fix: str = "re-run torchship export") -> list[str]:
    """Check the external data of an ONNX file without loading it; returns its locations."""
    locations = external_locations(load_onnx(model_path, fix=fix))
    check_locations(model_path, locations)
    return locations


def uses_external_data(model_path: Path) -> bool:
    return bool(check_file(model_path))


def save_model(model, path: Path, *, external: bool) -> None:
    """Save a ModelProto (with its data loaded) to ``path``, as one graph file plus ``<name>.data``."""
    import onnx

    path = Path(path)
    data = path.with_name(data_file_name(path))
    if data.exists():
        data.unlink()  # onnx appends to an existing data file
    if not external:
        if model.ByteSize() > PROTOBUF_LIMIT:
            raise ArtifactError(f"{path.name} is over 2 GB and must be saved with external data; use "
                                "--external-data auto or always")
        onnx.save_model(model, str(path))
        return
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=INLINE_BELOW_BYTES, convert_attribute=False)


def normalize(src: Path, dst: Path, mode: str = "auto") -> bool:
    """Rewrite the exporter's file ``src`` (and whatever data files it wrote) as ``dst`` under the rules
    above; returns whether ``dst`` uses external data. ``src`` and ``dst`` may be the same path."""
    import onnx

    src, dst = Path(src), Path(dst)
    graph_only = load_onnx(src)
    locations = external_locations(graph_only)
    check_locations(src, locations)
    if mode not in MODES:
        raise InputError(f"unknown external data mode {mode!r}; use {', '.join(MODES)}")
    external = mode == "always" or (mode == "auto" and initializer_bytes(graph_only) > THRESHOLD_BYTES)
    if not locations and not external:
        if src != dst:
            os.replace(src, dst)
        return False
    if locations == [data_file_name(src)] and src.name == dst.name and external:
        if src != dst:  # already as torchship writes it (the dynamo exporter's own layout): move, not rewrite
            os.replace(src.with_name(locations[0]), dst.with_name(locations[0]))
            os.replace(src, dst)
        return True
    del graph_only
    save_model(onnx.load(str(src), load_external_data=True), dst, external=external)
    return external


def copy_model(src: Path, dst: Path, mode: str = "keep") -> bool:
    """Copy the ONNX file ``src`` and the data files it names to ``dst`` (another name, another folder),
    its weights relocated into ``dst``'s one data file when it has external data. ``mode``: keep (external
    when ``src`` is), or as :func:`normalize`. Returns whether ``dst`` uses external data."""
    import shutil

    src, dst = Path(src), Path(dst)
    locations = check_file(src)
    with scratch_dir(dst.parent, "copy") as scratch:
        staged = scratch / src.name
        shutil.copyfile(src, staged)
        for location in locations:
            shutil.copyfile(src.parent / location, scratch / location)
        return normalize(staged, dst, ("always" if locations else "never") if mode == "keep" else mode)


def staged_model(final: Path):
    """:func:`torchship._fs.staged_file` for an ONNX model: its external data file (whose location inside
    the model is just its name) moves into place with it, and a stale one of an earlier version goes."""
    return staged_file(Path(final), companions=(data_file_name(final),))
