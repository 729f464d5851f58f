"""Where a family's checkpoints come from: transformers or diffusers.

A spec mixes in one source; export, the PyTorch runtime and the artifact call these methods, so no
generic code asks which library a family uses.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from torchship import loading
from torchship.errors import ArtifactError, BackendUnavailable, ModelLoadError, first_line
from torchship.exporters.spec import LABELLED_TASKS



def model_type_of(model) -> str:
    """transformers' model_type of a model object, or for diffusers models their class name (as in their
    config.json)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if isinstance(config, dict) and "_class_name" in config:
        model_type = config["_class_name"]
    return model_type or type(model).__name__


_POOLING_MODES = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean",
                  "pooling_mode_max_tokens": "max", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
                  "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
SUPPORTED_POOLING = ("cls", "mean", "max")
# What makes a sentence-transformers folder one, beside the transformer itself: it travels with the export.
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json")


def sentence_transformers_settings(folder: Path) -> dict:
    """Pooling, normalisation and length from a sentence-transformers folder (modules.json and the
    configs it names); a file that is there but cannot be read, or a pooling mode torchship does not
    implement, is an error, never a silent default."""
    settings = {}
    path = folder / "modules.json"
    try:
        for module in json.loads(path.read_text(encoding="utf-8")):
            kind = module.get("type", "")
            if kind.endswith("Pooling"):
                path = folder / module["path"] / "config.json"
                pcfg = json.loads(path.read_text(encoding="utf-8"))
                modes = [mode for key, mode in _POOLING_MODES.items() if pcfg.get(key)]
                if len(modes) != 1 or modes[0] not in SUPPORTED_POOLING:
                    raise ModelLoadError(f"{path} asks for {' + '.join(modes) or 'no'} pooling; torchship pools "
                                         f"one of {', '.join(SUPPORTED_POOLING)}")
                settings["pooling"] = modes[0]
            if kind.endswith("Normalize"):
                settings["normalize"] = True
        path = folder / "sentence_bert_config.json"
        if path.is_file():
            settings["max_length"] = json.loads(path.read_text(encoding="utf-8")).get("max_seq_length")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelLoadError(f"{path} (a sentence-transformers setting) cannot be read: {first_line(exc)}; "
                             "fix the file, or remove modules.json to export the plain transformer") from None
    return settings


def copy_sentence_transformers_files(src: Path, dst: Path) -> None:
    """modules.json, its module folders (pooling, normalize) and the package's configs, so that the export
    folder is still a sentence-transformers model."""
    import shutil

    for name in SENTENCE_TRANSFORMERS_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
    for module in json.loads((src / "modules.json").read_text(encoding="utf-8")):
        sub = module.get("path", "")
        if sub and (src / sub).is_dir() and not (dst / sub).exists():
            shutil.copytree(src / sub, dst / sub)


class TransformersSource:
    """Checkpoints that ``save_pretrained`` of a transformers model wrote; the spec names the Auto
    class per task with ``model_class(task)``."""

    def load_config(self, ref, *, trust_remote_code: bool = False):
        return loading.load_config(ref, trust_remote_code=trust_remote_code)

    def load_model(self, ref, config, task: str, *, allow_pickle: bool = False, trust_remote_code: bool = False,
                   attn_implementation: str | None = None):
        return loading.load_model(ref, config, model_class=self.model_class(task), allow_pickle=allow_pickle,
                                  trust_remote_code=trust_remote_code, attn_implementation=attn_implementation,
                                  experts_implementation=EXPORTABLE_EXPERTS)

    def load_tokenizer(self, ref, *, trust_remote_code: bool = False):
        return loading.load_tokenizer(ref, trust_remote_code=trust_remote_code)

    def save_config(self, model, folder: Path) -> None:
        model.config.save_pretrained(folder)

    def save_extras(self, source: Path | None, folder: Path) -> None:
        """What else of the checkpoint travels with the export: a sentence-transformers folder stays one."""
        if source is not None and (source / "modules.json").is_file():
            copy_sentence_transformers_files(source, folder)

    def text_settings(self, folder: Path | None, config, tokenizer, task: str) -> dict:
        """How the text layer turns outputs into results: pooling for embeddings, labels for classifiers."""
        settings = {"pooling": "mean", "normalize": False, "max_length": None,
                    "settings_from": "default (mean pooling)"}
        if folder is not None and (folder / "modules.json").is_file():
            settings.update(sentence_transformers_settings(folder), settings_from="sentence-transformers config")
        id2label = getattr(config, "id2label", None)
        labels = [id2label[i] for i in sorted(id2label)] if task in LABELLED_TASKS and id2label else None
        if settings["max_length"] is None and tokenizer is not None:
            tmax = getattr(tokenizer, "model_max_length", None)
            if isinstance(tmax, int) and tmax < 100_000:
                settings["max_length"] = tmax
        if settings["max_length"] is None:
            settings["max_length"] = int(getattr(config, "max_position_embeddings", None)
                                         or getattr(config, "n_positions", 512))
        try:  # a tokenizer's limit past the model's positions would index past its position table
            settings["max_length"] = min(int(settings["max_length"]), int(self.max_positions(config)))
        except (AttributeError, TypeError, ValueError):  # a family without a position table
            pass
        return {"pooling": settings["pooling"], "normalize": settings["normalize"],
                "max_length": int(settings["max_length"]), "labels": labels,
                "settings_from": settings["settings_from"]}

    def load_saved_config(self, folder: Path):
        from transformers import AutoConfig

        try:
            return AutoConfig.from_pretrained(str(folder))
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{folder}/config.json cannot be read ({exc}); re-run torchship export") from None

    def prepare_copy(self, model, attn_implementation: str | None):
        """A model object given by the user, deep-copied, with the export path's attention and experts code."""
        model = exportable_experts(model)
        if attn_implementation and model.config._attn_implementation != attn_implementation:
            model.set_attn_implementation(attn_implementation)
        return model


# Mixture-of-experts layers run their experts through transformers' grouped_mm custom operator by default, which
# has no ONNX function; batched_mm is the same arithmetic in standard operators at static shapes.
EXPORTABLE_EXPERTS = "batched_mm"


def exportable_experts(model):
    """A (copied) model whose experts, where it has any, run as ``EXPORTABLE_EXPERTS``."""
    can = getattr(type(model), "_can_set_experts_implementation", None)
    if can and can() and getattr(model.config, "_experts_implementation", None) != EXPORTABLE_EXPERTS:
        model.set_experts_implementation(EXPORTABLE_EXPERTS)
    return model


DIFFUSERS_EXTRA = "pip install 'torchship[diffusers]'"


@contextlib.contextmanager
def _quiet_diffusers():
    """diffusers logs advice (install accelerate) on every load; torchship's output stays its own."""
    from diffusers.utils import logging as dlogging

    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()
    try:
        yield
    finally:
        dlogging.set_verbosity(level)


def import_diffusers():
    try:
        import diffusers
    except ImportError:
        raise BackendUnavailable(f"this model needs the diffusers library, which is not installed; "
                                 f"{DIFFUSERS_EXTRA}") from None
    return diffusers


class DiffusersSource:
    """Model folders that ``save_pretrained`` of a diffusers model wrote (``config.json`` with a
    ``_class_name``, weights in ``diffusion_pytorch_model.safetensors``)."""

    def _model_cls(self):
        return getattr(import_diffusers(), self.diffusers_class)

    def load_config(self, ref, *, trust_remote_code: bool = False):
        cls = self._model_cls()
        try:
            return cls.load_config(ref.load_id, subfolder=ref.subfolder, revision=ref.revision)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot read the config of {ref.name!r}: {first_line(exc)}") from None

    def load_model(self, ref, config, task: str, *, allow_pickle: bool = False, trust_remote_code: bool = False,
                   attn_implementation: str | None = None):
        cls = self._model_cls()
        use_safetensors = loading.weight_policy(ref, allow_pickle=allow_pickle,
                                                safe=loading.DIFFUSERS_SAFE_WEIGHTS,
                                                pickle=loading.DIFFUSERS_PICKLE_WEIGHTS)
        try:
            with _quiet_diffusers():
                model = cls.from_pretrained(ref.load_id, subfolder=ref.subfolder, revision=ref.revision,
                                            use_safetensors=use_safetensors)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load the weights of {ref.name!r}: {first_line(exc)}") from None
        return model.eval()

    def load_tokenizer(self, ref, *, trust_remote_code: bool = False):
        return None

    def save_config(self, model, folder: Path) -> None:
        model.save_config(folder)

    def text_settings(self, folder: Path | None, config, tokenizer, task: str) -> dict:
        return {}

    def load_saved_config(self, folder: Path):
        try:
            return self._model_cls().load_config(str(folder))
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{folder}/config.json cannot be read ({exc}); re-run torchship export") from None

    def prepare_copy(self, model, attn_implementation: str | None):
        return model
