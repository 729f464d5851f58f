"""What the generic families share: which transformers classes a model type has (from transformers' own auto
mappings), what its forward takes, a wrapper that calls it by name, the outputs it gives, and ONNX Runtime's
fuser where ONNX Runtime has one for the model type.

A generic family (:mod:`generic_text`, :mod:`generic_media`) exports a model no family spec names; it is registered
with ``spec.register_generic`` and claims a model from its config.json alone, before any weights load.
"""

from __future__ import annotations

import inspect
from dataclasses import replace

import numpy as np

from torchship import loading
from torchship.errors import ModelLoadError, UnsupportedModelError
from torchship.exporters.sources import EXPORTABLE_EXPERTS, TransformersSource, exportable_experts
from torchship.exporters.spec import BATCH, TensorSpec


def mapping(name: str) -> dict[str, str]:
    """One of transformers' auto mappings by the part of its name between MODEL_FOR_ and _MAPPING_NAMES
    ("CTC", "MASKED_LM"); "" is the base models' (model type -> class name)."""
    from transformers.models.auto import modeling_auto

    return getattr(modeling_auto, f"MODEL_FOR_{name}_MAPPING_NAMES" if name else "MODEL_MAPPING_NAMES", {})


def class_name(model_type: str, name: str = "") -> str | None:
    """The transformers class of ``model_type`` in a mapping (a tuple there names several; the first is kept)."""
    found = mapping(name).get(model_type)
    return found[0] if isinstance(found, (tuple, list)) else found


def names_mapped_class(config, model_type: str, name: str) -> bool:
    """Whether the checkpoint's architectures name a class transformers' mapping ``name`` has for ``model_type``."""
    found = mapping(name).get(model_type)
    classes = set(found) if isinstance(found, (tuple, list)) else {found}
    return bool(classes & set(getattr(config, "architectures", None) or ()))


def forward_params(model_type: str, name: str = "") -> tuple[str, ...]:
    """The parameters of the forward of ``model_type``'s class in a mapping (base model by default); () when
    transformers has no such class."""
    import transformers

    cls = getattr(transformers, class_name(model_type, name) or "", None)
    if cls is None:
        return ()
    return tuple(p for p in inspect.signature(cls.forward).parameters if p != "self")


def takes_first(model_type: str, config: dict, first: str) -> bool:
    """Whether the model's base class reads ``first`` as its first input (input_ids, pixel_values,
    input_values): what tells text, image and audio models apart; encoder-decoders are left to their own."""
    if config.get("is_encoder_decoder"):
        return False
    params = forward_params(model_type)
    return bool(params) and params[0] == first


def config_int(config, *names, default: int = 0) -> int:
    """The first of a config's integer fields that is set (configs name the same thing differently)."""
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return default


def ort_fuser(model_type: str) -> str:
    """The model type itself where ONNX Runtime's transformer optimizer has a fuser for it (its MODEL_TYPES), else
    "" (optimize then makes the graph levels only)."""
    from onnxruntime.transformers.optimizer import MODEL_TYPES

    return model_type if model_type in MODEL_TYPES else ""


def bound(spec, model_type: str):
    """``spec`` with ONNX Runtime's fuser for this model type (a generic family serves many)."""
    fuser = ort_fuser(model_type)
    return spec if fuser == spec.ort_model_type else replace(spec, ort_model_type=fuser)


class GenericSource(TransformersSource):
    """Loading for a generic family: transformers' Auto class of the task, with the export path's attention only
    where the model's class has that implementation (many older ones have eager attention alone)."""

    def load_model(self, ref, config, task: str, *, allow_pickle: bool = False, trust_remote_code: bool = False,
                   attn_implementation: str | None = None):
        auto = self.model_class(task)
        concrete = _concrete(auto, config)
        if attn_implementation == "sdpa" and not getattr(concrete, "_supports_sdpa", False):
            attn_implementation = None
        return loading.load_model(ref, config, model_class=auto, allow_pickle=allow_pickle,
                                  trust_remote_code=trust_remote_code, attn_implementation=attn_implementation,
                                  experts_implementation=EXPORTABLE_EXPERTS)

    def prepare_copy(self, model, attn_implementation: str | None):
        model = exportable_experts(model)
        if attn_implementation and getattr(model, "_supports_sdpa", False) \
                and model.config._attn_implementation != attn_implementation:
            model.set_attn_implementation(attn_implementation)
        return model


def _concrete(auto, config):
    """The class an Auto class picks for ``config``; refused in one line when it has none."""
    try:
        return auto._model_mapping[type(config)]
    except KeyError:
        raise ModelLoadError(f"transformers has no {auto.__name__} for a {config.model_type!r} model, so it has no "
                             "head for this task; choose another --task") from None


def make_named_wrapper(model, input_names: tuple[str, ...], output_names: tuple[str, ...]):
    """The model called by keyword with the graph's inputs, its named outputs as a tuple: the positional forward
    both exporters need, in eval mode (torch.onnx.export restores the wrapper's flag onto the model)."""
    import torch

    class NamedWrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            out = self.model(**dict(zip(input_names, inputs)), return_dict=True)
            return tuple(out[name] for name in output_names)

    return NamedWrapper().eval()


def probe_outputs(model, feeds: tuple[dict[str, np.ndarray], dict[str, np.ndarray]], wanted: tuple[str, ...],
                  dynamic: str) -> tuple[TensorSpec, ...]:
    """The outputs of ``wanted`` the model gives (not None), with their axes: run at two input shapes, an axis
    that follows the batch is ``batch``, one that follows the other input sizes is ``dynamic``, the rest fixed."""
    import torch

    runs = []
    for f in feeds:
        with torch.inference_mode():
            out = model(**{k: torch.from_numpy(v) for k, v in f.items()}, return_dict=True)
        runs.append({n: tuple(out[n].shape) for n in wanted if out.get(n) is not None})
    specs = []
    for name, shape in runs[0].items():
        other = runs[1][name]
        axes = tuple(BATCH if i == 0 else (dynamic if a != b else int(a)) for i, (a, b) in enumerate(zip(shape, other)))
        specs.append(TensorSpec(name, "float32", axes))
    if not specs:
        raise UnsupportedModelError(f"{type(model).__name__} gives none of {', '.join(wanted)}")
    return tuple(specs)
