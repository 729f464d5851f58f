"""Find and load a Hugging Face checkpoint: a local folder or a hub id.

Rules: ``trust_remote_code`` stays off unless asked; safetensors weights are preferred and a
pickle-only checkpoint (``pytorch_model.bin``) is refused unless the user passes ``allow_pickle``;
an unreachable hub fails at once with one line, instead of retrying for half a minute.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlparse

from torchship.errors import InputError, ModelLoadError, first_line

_PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
# Files a saved tokenizer leaves; with none of them, transformers 5 would build an empty tokenizer.
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "spiece.model",
                    "sentencepiece.bpe.model", "tokenizer.model")
_SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
DIFFUSERS_SAFE_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json")
DIFFUSERS_PICKLE_WEIGHTS = ("diffusion_pytorch_model.bin", "diffusion_pytorch_model.bin.index.json")
# A diffusers pipeline folder holds its components in subfolders; the one torchship exports:
PIPELINE_COMPONENT = "unet"


@dataclass(frozen=True)
class ModelRef:
    """Where a checkpoint comes from: ``name`` as the user gave it, ``path`` for local folders."""

    name: str
    path: Path | None  # local folder, or None for a hub id
    revision: str | None = None
    subfolder: str | None = None  # hub ids of diffusers pipelines: the component's folder

    @property
    def load_id(self) -> str:
        return str(self.path) if self.path is not None else self.name

    def describe(self) -> str:
        return str(self.path) if self.path is not None else f"hub:{self.name}"


def _looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else is meant as a folder."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def resolve(model: str, *, revision: str | None = None) -> ModelRef:
    """Turn ``--model`` into a :class:`ModelRef`, checking local folders thoroughly."""
    if not model or not model.strip():
        raise InputError("--model is empty; pass a local model folder or a Hugging Face hub id")
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InputError(f"{model} is a file; --model takes a model folder or a hub id")
        if (path / "model_index.json").is_file() and (path / PIPELINE_COMPONENT / "config.json").is_file():
            path = path / PIPELINE_COMPONENT  # a diffusers pipeline: its UNet
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{model} has no config.json, so it is not a Hugging Face model folder; "
                "pass the folder that save_pretrained() wrote"
            )
        return ModelRef(model, path.resolve(), revision)
    if _looks_like_path(model):
        raise InputError(f"model folder {model} does not exist")
    return ModelRef(model, None, revision)


GENERIC_FOLDERS = {"model", "models", "onnx", "unet", "checkpoint", "export", "out", "output"}


def model_name(ref: ModelRef) -> str:
    """What reports call a checkpoint: a hub id as given; a local folder by its model card's title (the
    first heading of README.md, as Hugging Face model cards begin), else by its folder's name (its parent's
    too when the name says nothing, like 'model')."""
    if ref.path is None:
        return ref.name
    card = ref.path / "README.md"
    if card.is_file():
        try:
            lines = card.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            lines = []
        if lines and lines[0].strip() == "---":  # YAML front matter
            end = next((i for i, line in enumerate(lines[1:], 1) if line.strip() == "---"), len(lines))
            lines = lines[end + 1:]
        title = next((line[2:].strip() for line in lines if line.startswith("# ")), "")
        if title and len(title) <= 80:
            return title
    parts = ref.path.parts
    return "/".join(parts[-2:]) if ref.path.name.lower() in GENERIC_FOLDERS else ref.path.name


def weight_policy(ref: ModelRef, *, allow_pickle: bool, safe=_SAFE_WEIGHTS, pickle=_PICKLE_WEIGHTS) -> bool | None:
    """The ``use_safetensors`` argument for from_pretrained, refusing silent pickle loading.
    ``safe`` and ``pickle`` are the weight file names of the checkpoint's library."""
    if ref.path is None:
        return None if allow_pickle else True
    files = {p.name for p in ref.path.iterdir()}
    if files & set(safe):
        return True
    if files & set(pickle):
        if allow_pickle:
            return False
        raise ModelLoadError(
            f"{ref.path} holds only pickle weights ({pickle[0]}), which can run code when "
            f"loaded; convert them to {safe[0]}, or pass --allow-pickle if you trust the file"
        )
    raise ModelLoadError(
        f"{ref.path} has a config.json but no weights ({safe[0]}); "
        "pass the folder that save_pretrained() wrote"
    )


def _hub_reachable(timeout: float = 3.0) -> str | None:
    """None when the hub endpoint accepts a TCP connection, else the reason it does not."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{url.hostname} cannot be reached ({exc.strerror or exc})"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _not_available(ref: ModelRef, why: str) -> ModelLoadError:
    return ModelLoadError(
        f"cannot load {ref.name!r}: it is not a local folder, not in the Hugging Face cache, and {why}; "
        f"download it where there is network (hf download {ref.name} --local-dir DIR) and pass --model DIR"
    )


def peek(ref: ModelRef) -> tuple[str, ModelRef]:
    """The checkpoint's model type, read from its config.json without loading any library, and the
    ref to load from. The type is transformers' ``model_type``, or for diffusers the ``_class_name``;
    a diffusers pipeline on the hub resolves to its UNet subfolder."""
    model_type, _, ref = peek_config(ref)
    return model_type, ref


def peek_config(ref: ModelRef) -> tuple[str, dict, ModelRef]:
    """``peek``, with the config.json it read (a dict)."""
    if ref.path is not None:
        data = _read_config_json(ref.path / "config.json")
    else:
        data = None
        for sub in (None, PIPELINE_COMPONENT):
            path = _hub_file(ref, "config.json", subfolder=sub)
            if path is not None:
                data, ref = _read_config_json(path), replace(ref, subfolder=sub)
                break
        if data is None:
            raise ModelLoadError(f"{ref.name!r} on the hub has no config.json (nor unet/config.json); "
                                 "pass a transformers model or a diffusers UNet")
    model_type = data.get("_class_name") or data.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise ModelLoadError(f"the config.json of {ref.name!r} names neither a model_type (transformers) nor a "
                             "_class_name (diffusers); pass the folder that save_pretrained() wrote")
    return model_type, data, ref


def _read_config_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path} could not be read: {first_line(exc)}") from None
    except ValueError as exc:
        raise ModelLoadError(f"{path} is not usable: not valid JSON ({first_line(exc)})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} is not usable: it holds no JSON object")
    return data


def _hub_file(ref: ModelRef, filename: str, *, subfolder: str | None = None) -> Path | None:
    """A file of a hub repo: from the cache, else from the hub when it can be reached; None when the
    repo has no such file."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    kwargs = dict(repo_id=ref.name, filename=filename, subfolder=subfolder, revision=ref.revision)
    try:
        return _cache_then_hub(ref, lambda local: Path(hf_hub_download(**kwargs, local_files_only=local)),
                               (LocalEntryNotFoundError, EntryNotFoundError, OSError, ValueError))
    except EntryNotFoundError:
        return None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load {ref.name!r} from the hub: {first_line(exc)}") from None


def _cache_then_hub(ref: ModelRef, fetch, cache_misses: tuple):
    """``fetch(local_only=True)``; on a cache miss, ``fetch(False)`` when the hub can be reached, else
    one clear error at once (transformers would retry for half a minute)."""
    try:
        return fetch(True)
    except cache_misses:
        pass
    if _offline():
        raise _not_available(ref, "HF_HUB_OFFLINE is set")
    reason = _hub_reachable()
    if reason:
        raise _not_available(ref, reason)
    return fetch(False)


def load_config(ref: ModelRef, *, trust_remote_code: bool = False):
    """Load the model's config, from the cache first for hub ids."""
    from transformers import AutoConfig

    if ref.path is not None:
        try:
            return AutoConfig.from_pretrained(ref.path, trust_remote_code=trust_remote_code)
        except ValueError as exc:
            raise ModelLoadError(f"{ref.path}/config.json is not usable: {first_line(exc)}") from None
        except OSError as exc:
            raise ModelLoadError(f"{ref.path}/config.json could not be read: {first_line(exc)}") from None
    kwargs = dict(revision=ref.revision, trust_remote_code=trust_remote_code)
    try:
        return _cache_then_hub(ref, lambda local: AutoConfig.from_pretrained(ref.name, local_files_only=local,
                                                                             **kwargs), (OSError, ValueError))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load {ref.name!r} from the hub: {first_line(exc)}") from None


def load_model(ref: ModelRef, config, *, model_class, allow_pickle: bool = False,
               trust_remote_code: bool = False, attn_implementation: str | None = None,
               experts_implementation: str | None = None):
    """Load the checkpoint as ``model_class`` (a transformers Auto class) in eval mode."""
    kwargs = dict(
        config=config,
        trust_remote_code=trust_remote_code,
        use_safetensors=weight_policy(ref, allow_pickle=allow_pickle),
        revision=ref.revision,
    )
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if experts_implementation:
        kwargs["experts_implementation"] = experts_implementation
    try:
        model = model_class.from_pretrained(ref.load_id, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load the weights of {ref.name!r}: {first_line(exc)}") from None
    return model.eval()


def has_tokenizer_files(folder: Path) -> bool:
    """Whether ``folder`` holds the files a saved tokenizer leaves (the folder is read, not a flag about it)."""
    return any((Path(folder) / f).is_file() for f in _TOKENIZER_FILES)


def load_tokenizer_folder(folder: str, *, trust_remote_code: bool = False):
    """The tokenizer that ``tokenizer.save_pretrained(folder)`` wrote (export --tokenizer FOLDER)."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise InputError(f"--tokenizer {folder}: {'is a file' if path.exists() else 'does not exist'}; pass the "
                         "folder that tokenizer.save_pretrained() wrote")
    if not has_tokenizer_files(path):
        raise InputError(f"--tokenizer {folder} holds no tokenizer files ({', '.join(_TOKENIZER_FILES[:3])}, ...); "
                         "pass the folder that tokenizer.save_pretrained() wrote")
    return load_tokenizer(ModelRef(folder, path.resolve()), trust_remote_code=trust_remote_code)


def load_tokenizer(ref: ModelRef, *, trust_remote_code: bool = False):
    """The checkpoint's tokenizer, or None when a local checkpoint ships no tokenizer files. Files that are
    there but cannot be loaded are an error, not a silent None."""
    from transformers import AutoTokenizer

    if ref.path is not None and not has_tokenizer_files(ref.path):
        return None
    try:
        return AutoTokenizer.from_pretrained(
            ref.load_id, revision=ref.revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, TypeError) as exc:
        if ref.path is None:  # a hub repository without a tokenizer
            return None
        raise ModelLoadError(f"the tokenizer files in {ref.path} cannot be loaded: {first_line(exc)}; fix them, "
                             "or remove them to export without a tokenizer") from None


