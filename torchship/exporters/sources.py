"""Where a family's checkpoints come from: transformers or diffusers.

A spec mixes in one source; export, the PyTorch runtime and the artifact call these methods, so no
generic code asks which library a family uses.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from torchship import loading
from torchship.errors import ArtifactError, BackendUnavailable, ModelLoadError


class TransformersSource:
    """Checkpoints that ``save_pretrained`` of a transformers model wrote; the spec names the Auto
    class per task with ``model_class(task)``."""

    has_text = True  # a tokenizer and text settings travel with the export

    def load_config(self, ref, *, trust_remote_code: bool = False):
        return loading.load_config(ref, trust_remote_code=trust_remote_code)

    def load_model(self, ref, config, task: str, *, allow_pickle: bool = False, trust_remote_code: bool = False,
                   attn_implementation: str | None = None):
        return loading.load_model(ref, config, model_class=self.model_class(task), allow_pickle=allow_pickle,
                                  trust_remote_code=trust_remote_code, attn_implementation=attn_implementation)

    def load_tokenizer(self, ref, *, trust_remote_code: bool = False):
        return loading.load_tokenizer(ref, trust_remote_code=trust_remote_code)

    def save_config(self, model, folder: Path) -> None:
        model.config.save_pretrained(folder)
        if getattr(model, "generation_config", None) is not None and self.kind == "decoder":
            model.generation_config.save_pretrained(folder)

    def load_saved_config(self, folder: Path):
        from transformers import AutoConfig

        try:
            return AutoConfig.from_pretrained(str(folder))
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{folder}/config.json cannot be read ({exc}); re-run torchship export") from None

    def prepare_copy(self, model, attn_implementation: str | None):
        """A model object given by the user, deep-copied, with the export path's attention code."""
        if attn_implementation and model.config._attn_implementation != attn_implementation:
            model.set_attn_implementation(attn_implementation)
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

    has_text = False

    def _model_cls(self):
        return getattr(import_diffusers(), self.diffusers_class)

    def load_config(self, ref, *, trust_remote_code: bool = False):
        cls = self._model_cls()
        try:
            return cls.load_config(ref.load_id, subfolder=ref.subfolder, revision=ref.revision)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot read the config of {ref.name!r}: {loading.first_line(exc)}") from None

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
            raise ModelLoadError(f"cannot load the weights of {ref.name!r}: {loading.first_line(exc)}") from None
        return model.eval()

    def load_tokenizer(self, ref, *, trust_remote_code: bool = False):
        return None

    def save_config(self, model, folder: Path) -> None:
        model.save_config(folder)

    def load_saved_config(self, folder: Path):
        try:
            return self._model_cls().load_config(str(folder))
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{folder}/config.json cannot be read ({exc}); re-run torchship export") from None

    def prepare_copy(self, model, attn_implementation: str | None):
        return model
