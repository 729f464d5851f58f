"""TensorRT shape profiles: min, opt and max shapes per input, from a shape config or trtexec-style flags."""

from __future__ import annotations

from dataclasses import dataclass

from torchship.errors import InputError
from torchship.shapes import ResolvedShapes, ShapeConfig, parse_shape_config
from torchship.tensors import ModelIO

FLAG_EXAMPLE = "input_ids:1x16,attention_mask:1x16"


@dataclass(frozen=True)
class InputProfile:
    """The shapes one input must accept: TensorRT's min, opt (the shape it tunes for) and max."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def __post_init__(self):
        for which in ("min", "opt", "max"):
            object.__setattr__(self, which, tuple(int(v) for v in getattr(self, which)))
        if not len(self.min) == len(self.opt) == len(self.max):
            raise InputError(f"profile for {self.name!r} has min, opt and max of different ranks "
                             f"({list(self.min)}, {list(self.opt)}, {list(self.max)})")
        for axis, (a, b, c) in enumerate(zip(self.min, self.opt, self.max)):
            if a < 0 or not a <= b <= c:
                raise InputError(f"profile for {self.name!r} needs 0 <= min <= opt <= max at axis {axis}; "
                                 f"got min {list(self.min)}, opt {list(self.opt)}, max {list(self.max)}")

    def to_json(self) -> dict:
        return {"name": self.name, "min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_json(cls, data: dict) -> "InputProfile":
        return cls(data["name"], tuple(data["min"]), tuple(data["opt"]), tuple(data["max"]))


def profiles_from_shapes(resolved: ResolvedShapes, io: ModelIO) -> tuple[InputProfile, ...]:
    """One profile per model input from a resolved shape config; its ``use`` sizes become ``opt``."""
    out = []
    for spec in io.inputs:
        bounds = {"min": [], "opt": [], "max": []}
        for axis in spec.axes:
            if isinstance(axis, int):
                values = (axis, axis, axis)
            elif axis in resolved.axes:
                values = resolved.axes[axis]
            else:
                raise InputError(f"input {spec.name!r} has axis {axis!r}, which the shape config gives no "
                                 f"size for (it names {', '.join(resolved.axes) or 'no axes'}); add {axis} to it")
            for which, value in zip(bounds, values):
                bounds[which].append(value)
        out.append(InputProfile(spec.name, tuple(bounds["min"]), tuple(bounds["opt"]), tuple(bounds["max"])))
    return tuple(out)


def _parse_flag(text: str | None, flag: str) -> dict[str, list[int]]:
    """``"input_ids:1x16,attention_mask:1x16"`` -> {name: [sizes]}."""
    if text is None or not text.strip():
        return {}

    def bad(why: str):
        return InputError(f"{flag} {text!r} is not valid: {why}; write it as {flag} {FLAG_EXAMPLE}")

    out: dict[str, list[int]] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, dims = item.rpartition(":")
        name = name.strip().strip("'\"")
        if not sep or not name:
            raise bad(f"{item!r} needs NAME:SIZES")
        sizes = [d.strip() for d in dims.lower().split("x")]
        if not all(s.isdigit() for s in sizes):
            raise bad(f"the sizes of {name!r} must be whole numbers joined by x, e.g. 1x16")
        if name in out:
            raise bad(f"input {name!r} is given twice")
        out[name] = [int(s) for s in sizes]
    if not out:
        raise bad("it names no input")
    return out


def shape_config_from_flags(min_shapes: str | None, opt_shapes: str | None, max_shapes: str | None,
                            device: str = "cuda") -> ShapeConfig:
    """trtexec-style ``--min/--opt/--max-shapes`` flags as a shape config (min and max default to opt)."""
    given = {"min": _parse_flag(min_shapes, "--min-shapes"), "use": _parse_flag(opt_shapes, "--opt-shapes"),
             "max": _parse_flag(max_shapes, "--max-shapes")}
    if not any(given.values()):
        raise InputError(f"no shapes given; pass --opt-shapes (and --min-shapes, --max-shapes for a range), "
                         f"e.g. --opt-shapes {FLAG_EXAMPLE}")
    names = list(dict.fromkeys([*given["use"], *given["min"], *given["max"]]))
    inputs = {}
    for name in names:
        if name not in given["use"]:
            raise InputError(f"input {name!r} is in --min-shapes or --max-shapes but not in --opt-shapes; give "
                             f"its opt shape too, e.g. --opt-shapes {name}:1x16")
        inputs[name] = {w: shapes[name] for w, shapes in given.items() if name in shapes}
    return parse_shape_config({"device": device, "inputs": inputs}, source="--min/--opt/--max-shapes")


def artifact_profiles(artifact) -> tuple[InputProfile, ...]:
    """Profiles for an exported folder: its shape config (min/use/max) when it has one, else from 1 up to
    the largest of the family's benchmark shapes, optimized for that largest shape."""
    from torchship.exporters.spec import family_of, saved_config
    from torchship.backends import backend

    m = artifact.manifest
    spec = family_of(m)
    problem = spec.backend_problem(backend("tensorrt"))
    if problem:
        raise InputError(f"{artifact.folder} holds {spec.group.one}: {problem}")
    resolved = m.resolved_shapes()
    if resolved is None:
        sizes = spec.bench_sizes(saved_config(artifact))
        axes = {a: (1, max(s[a] for s in sizes), max(s[a] for s in sizes)) for a in sizes[0]}
        resolved = ResolvedShapes("cuda", axes, {}, {})
    return profiles_from_shapes(resolved, m.io())
