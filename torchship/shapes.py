"""The shape config: the shapes a model must serve, stated once in a YAML (or JSON) file.

In the spirit of the original Auto Acceleration ``config.yml``::

    device: cpu                 # cpu, cuda, cuda:N (or a GPU index)
    inputs:
      sample:                {min: [1, 9, 32, 32], use: [1, 9, 64, 64], max: [2, 9, 64, 64]}
      timestep:              {min: [1], use: [1], max: [2]}
      encoder_hidden_states: {min: [1, 77, 1024], use: [1, 77, 1024], max: [2, 77, 1024]}
    outputs:
      out_sample: {use: [1, 4, 64, 64]}

``use`` is the shape benchmarks run at; ``min`` and ``max`` bound what the model must accept (they
default to ``use``). The file is checked on its own (:func:`load_shape_config`), then against a
model's inputs (:func:`resolve`): shapes are matched by *axis name*, so every dynamic axis (batch,
height, sequence, ...) gets one min/use/max, inputs sharing an axis must agree, fixed sizes (channel
counts, widths) must be the model's, and an input may be left out when its axes are named by others.
Export validates at the min, use and max shapes; bench runs at use; the folder's manifest keeps the
resolved shapes so later stages read them without the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from torchship.errors import InputError, first_line

WHICH = ("min", "use", "max")
_ALIASES = {"min": ("min", "min_shape"), "use": ("use", "use_shape", "opt", "opt_shape"),
            "max": ("max", "max_shape")}
TOP_KEYS = ("device", "inputs", "outputs")


@dataclass(frozen=True)
class InputShapes:
    min: tuple[int, ...]
    use: tuple[int, ...]
    max: tuple[int, ...]

    def get(self, which: str) -> tuple[int, ...]:
        return getattr(self, which)


@dataclass(frozen=True)
class ShapeConfig:
    """A parsed shape config, not yet checked against any model."""

    device: str = "cpu"
    inputs: dict[str, InputShapes] = field(default_factory=dict)
    outputs: dict[str, tuple[int, ...]] = field(default_factory=dict)  # output name -> use shape
    source: str = "shape config"


@dataclass(frozen=True)
class ResolvedShapes:
    """A shape config checked against a model: one (min, use, max) per named axis, and full shapes."""

    device: str
    axes: dict[str, tuple[int, int, int]]
    inputs: dict[str, dict[str, list[int]]]  # input name -> {"min": [...], "use": [...], "max": [...]}
    outputs: dict[str, list[int]]  # output name -> use shape, as the config states it

    def sizes(self, which: str) -> dict[str, int]:
        """The size of every named axis at ``which`` (min, use or max)."""
        i = WHICH.index(which)
        return {axis: values[i] for axis, values in self.axes.items()}

    def to_json(self) -> dict:
        return {"device": self.device, "axes": {k: list(v) for k, v in self.axes.items()},
                "inputs": self.inputs, "outputs": self.outputs}

    @classmethod
    def from_json(cls, data: dict) -> "ResolvedShapes":
        return cls(data["device"], {k: tuple(v) for k, v in data["axes"].items()}, data["inputs"],
                   data.get("outputs", {}))


def load_shape_config(path: str | Path) -> ShapeConfig:
    """Read and check a shape config file on its own (types, ranks, min <= use <= max)."""
    return parse_shape_config(read_config_file(path), source=str(path))


def read_config_file(path: str | Path, *, what: str = "shape config"):
    """The YAML (or .json) mapping in ``path``, with one-line errors for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist; pass a YAML file with device and inputs")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{what} {path} cannot be read: {exc}") from None
    try:
        import yaml

        data = yaml.safe_load(text) if path.suffix.lower() != ".json" else json.loads(text)
    except Exception as exc:  # yaml.YAMLError, json.JSONDecodeError
        mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
        if mark is not None and problem:  # yaml: say what and where, not what it was parsing
            first = f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
        else:
            first = first_line(exc, limit=None)
        raise InputError(f"{what} {path} is not valid YAML/JSON: {first}") from None
    return data


def parse_shape_config(data, *, source: str = "shape config") -> ShapeConfig:
    if not isinstance(data, dict):
        raise InputError(f"{source} must be a mapping with 'device' and 'inputs'")
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise InputError(f"{source}: unknown key {unknown[0]!r}; the keys are {', '.join(TOP_KEYS)}")
    device = parse_device(data.get("device", "cpu"), source=source)
    raw_inputs = _named_entries(data.get("inputs"), "inputs", source)
    if not raw_inputs:
        raise InputError(f"{source}: 'inputs' is missing or empty; give min/use/max shapes per input")
    inputs = {name: _input_shapes(name, entry, source) for name, entry in raw_inputs.items()}
    outputs = {}
    for name, entry in _named_entries(data.get("outputs"), "outputs", source).items():
        use = _pick(entry, "use", name, source) if isinstance(entry, dict) else entry
        if use is None:
            raise InputError(f"{source}: output {name!r} needs a 'use' shape")
        outputs[name] = _shape(use, f"output {name!r} use", source)
    return ShapeConfig(device, inputs, outputs, source)


def parse_device(value, *, source: str = "shape config") -> str:
    """'cpu', 'cuda', 'cuda:N', 'gpu' or a GPU index -> 'cpu' or 'cuda:N'."""
    if isinstance(value, bool):
        value = str(value)
    if isinstance(value, int):
        if value < 0:
            raise InputError(f"{source}: device {value} is not a GPU index; use cpu, cuda or a number >= 0")
        return f"cuda:{value}"
    text = str(value).strip().lower()
    if text == "cpu":
        return "cpu"
    if text in ("cuda", "gpu"):
        return "cuda:0"
    for prefix in ("cuda:", "gpu:"):
        if text.startswith(prefix) and text[len(prefix):].isdigit():
            return f"cuda:{int(text[len(prefix):])}"
    if text.isdigit():
        return f"cuda:{int(text)}"
    raise InputError(f"{source}: unknown device {value!r}; use cpu, cuda, cuda:N or a GPU index")


def _named_entries(value, what: str, source: str) -> dict:
    """``{name: entry}`` from a mapping, or from a list of entries that carry a ``name``."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): v for k, v in value.items()}
    if isinstance(value, list):
        out = {}
        for entry in value:
            if not isinstance(entry, dict) or "name" not in entry:
                raise InputError(f"{source}: every item of '{what}' needs a 'name'")
            out[str(entry["name"])] = {k: v for k, v in entry.items() if k != "name"}
        return out
    raise InputError(f"{source}: '{what}' must be a mapping of name -> shapes")


def _pick(entry: dict, which: str, name: str, source: str):
    found = [k for k in _ALIASES[which] if k in entry]
    if len(found) > 1:
        raise InputError(f"{source}: input {name!r} gives both {found[0]!r} and {found[1]!r}; keep one")
    return entry[found[0]] if found else None


def _input_shapes(name: str, entry, source: str) -> InputShapes:
    if not isinstance(entry, dict):
        raise InputError(f"{source}: input {name!r} needs a mapping with min, use and max shapes")
    known = {k for keys in _ALIASES.values() for k in keys}
    unknown = [k for k in entry if k not in known]
    if unknown:
        raise InputError(f"{source}: input {name!r} has unknown key {unknown[0]!r}; use min, use and max")
    raw = {w: _pick(entry, w, name, source) for w in WHICH}
    if raw["use"] is None:
        raise InputError(f"{source}: input {name!r} needs a 'use' shape (the shape benchmarks run at)")
    use = _shape(raw["use"], f"input {name!r} use", source)
    lo = _shape(raw["min"], f"input {name!r} min", source) if raw["min"] is not None else use
    hi = _shape(raw["max"], f"input {name!r} max", source) if raw["max"] is not None else use
    if not len(lo) == len(use) == len(hi):
        raise InputError(f"{source}: input {name!r} has min, use and max of different ranks "
                         f"({list(lo)}, {list(use)}, {list(hi)})")
    for axis, (a, b, c) in enumerate(zip(lo, use, hi)):
        if a > c:
            raise InputError(f"{source}: input {name!r} has min {list(lo)} > max {list(hi)} at axis {axis}")
        if not a <= b <= c:
            raise InputError(f"{source}: input {name!r} has use {list(use)} outside min {list(lo)}..max "
                             f"{list(hi)} at axis {axis}")
    return InputShapes(lo, use, hi)


def _shape(value, what: str, source: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise InputError(f"{source}: {what} must be a list of sizes, e.g. [1, 128]; got {value!r}")
    out = []
    for size in value:
        if isinstance(size, bool) or not isinstance(size, int):
            raise InputError(f"{source}: {what} has {size!r}; sizes are whole numbers, e.g. [1, 128]")
        if size < 0:
            raise InputError(f"{source}: {what} has {size}; sizes cannot be negative")
        out.append(size)
    return tuple(out)


def resolve(config: ShapeConfig, io, *, empty_ok_axes=frozenset()) -> ResolvedShapes:
    """Check ``config`` against a model's inputs and outputs (a ModelIO) and name every axis size."""
    src = config.source
    names = list(io.input_names)
    unknown = [n for n in config.inputs if n not in names]
    if unknown:
        raise InputError(f"{src} names input {unknown[0]!r}, which the model does not have; "
                         f"its inputs are {', '.join(names)}")
    unknown = [n for n in config.outputs if n not in io.output_names]
    if unknown:
        raise InputError(f"{src} names output {unknown[0]!r}, which the model does not have; "
                         f"its outputs are {', '.join(io.output_names)}")
    axes: dict[str, tuple[int, int, int]] = {}
    where: dict[str, str] = {}
    for spec in io.inputs:
        shapes = config.inputs.get(spec.name)
        if shapes is None:
            continue
        if len(shapes.use) != len(spec.axes):
            raise InputError(f"{src}: input {spec.name!r} has {len(spec.axes)} axes in the model "
                             f"({_axes_text(spec.axes)}); the config gives {len(shapes.use)}")
        for i, axis in enumerate(spec.axes):
            values = tuple(shapes.get(w)[i] for w in WHICH)
            if isinstance(axis, int):
                if any(v != axis for v in values):
                    bad = next(v for v in values if v != axis)
                    raise InputError(f"{src}: input {spec.name!r} axis {i} is fixed at {axis} in the model "
                                     f"({_axes_text(spec.axes)}); the config says {bad}")
                continue
            if values[0] == 0 and axis not in empty_ok_axes:
                raise InputError(f"{src}: input {spec.name!r} axis {i} ({axis}) has min 0; give at least 1")
            if axis in axes and axes[axis] != values:
                raise InputError(f"{src}: axis {axis!r} is {_range_text(axes[axis])} in input {where[axis]!r} "
                                 f"but {_range_text(values)} in input {spec.name!r}; they must agree")
            axes.setdefault(axis, values)
            where.setdefault(axis, spec.name)
    for spec in io.inputs:
        missing = [a for a in spec.axes if isinstance(a, str) and a not in axes]
        if missing:
            raise InputError(f"{src} gives no shape for input {spec.name!r}, and its axis {missing[0]!r} is "
                             f"named by no other input; add {spec.name} to the config")
    for name, use in config.outputs.items():
        spec = next(t for t in io.outputs if t.name == name)
        if len(use) != len(spec.axes):
            raise InputError(f"{src}: output {name!r} has {len(spec.axes)} axes in the model "
                             f"({_axes_text(spec.axes)}); the config gives {len(use)}")
        for i, (axis, size) in enumerate(zip(spec.axes, use)):
            expected = axis if isinstance(axis, int) else axes.get(axis, (None, None, None))[1]
            if expected is not None and size != expected:
                raise InputError(f"{src}: output {name!r} use shape {list(use)} does not fit the inputs' use "
                                 f"shapes: axis {i} ({axis}) would be {expected}")
    full = {}
    for spec in io.inputs:
        full[spec.name] = {w: [a if isinstance(a, int) else axes[a][WHICH.index(w)] for a in spec.axes]
                           for w in WHICH}
    return ResolvedShapes(config.device, axes, full, {k: list(v) for k, v in config.outputs.items()})


def check_outputs(resolved: ResolvedShapes, outputs: dict, *, source: str = "the shape config") -> None:
    """The model's real outputs at the use shape against the config's output use shapes."""
    for name, want in resolved.outputs.items():
        got = list(outputs[name].shape) if name in outputs else None
        if got is not None and got != list(want):
            raise InputError(f"{source} says output {name!r} has use shape {want}, but the model gives {got} "
                             f"at the use shape; fix the config's outputs")


def _axes_text(axes) -> str:
    return ", ".join(str(a) for a in axes)


def _range_text(values) -> str:
    lo, use, hi = values
    return f"{lo}..{hi} (use {use})"
