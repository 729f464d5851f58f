"""Reading ONNX files: one place, one clear error for a missing or corrupted file."""

from __future__ import annotations

from pathlib import Path

from torchship.errors import ArtifactError, first_line


def load_onnx(path: Path, *, load_external_data: bool = False, fix: str = "re-run torchship export"):
    """``onnx.load`` with a clear error for missing or corrupted files; ``fix`` names the command that
    makes the file again."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"ONNX file {path} is missing; {fix}")
    try:
        return onnx.load(str(path), load_external_data=load_external_data)
    except (DecodeError, ValueError, OSError) as exc:
        raise ArtifactError(f"cannot read {path}: {first_line(exc, 200)}; the file is corrupted or incomplete, "
                            f"{fix}") from None


def drop_unused_initializers(model) -> list[str]:
    """Remove the initializers that no node reads, in the graph or any subgraph, and no graph or subgraph output
    names (a folded bias or a table copy left behind: ONNX Runtime warns once per such initializer every time the
    model loads). Returns their names."""
    used = set()

    def walk(graph) -> None:
        used.update(o.name for o in graph.output)
        for node in graph.node:
            used.update(node.input)
            for attr in node.attribute:
                for sub in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
                    walk(sub)
    walk(model.graph)
    unused = [i.name for i in model.graph.initializer if i.name not in used]
    if unused:
        kept = [i for i in model.graph.initializer if i.name in used]
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
    return unused
