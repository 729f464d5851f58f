"""The TensorRT engine cache: keys from everything an engine depends on, and the folder that keeps them.

An engine is built once per (model bytes, shape profiles, precision, GPU, TensorRT version, builder
options) and kept in a cache folder, by default ``DIR/tensorrt/`` beside the export, with a tactic
timing cache shared by every build there.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from torchship._fs import hash_file, write_bytes_atomic, write_json_atomic
from torchship.errors import ArtifactError, InputError
from torchship.external_data import data_file_name

CACHE_DIR = "tensorrt"  # the cache folder inside an export folder
TIMING_CACHE = "timing.cache"
PRECISIONS = ("fp16", "bf16", "int8", "tf32")  # flags on top of fp32; "fp32" alone means none of them
KEY_VERSION = 1  # bump when the key's contents change, so old entries are not reused


def model_digest(path: Path) -> str:
    """sha256 of an ONNX file and, when it has one, its external data file."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"ONNX file {path} is missing")
    digest = hashlib.sha256()
    for part in (path, path.with_name(data_file_name(path))):
        if not part.is_file():
            continue
        digest.update(f"{part.name}\0{part.stat().st_size}\0".encode())
        hash_file(part, digest)
    return digest.hexdigest()


def normalize_precision(precision) -> tuple[str, ...]:
    """Sorted, distinct precision flags; "fp32" (TensorRT's base precision) is dropped."""
    if isinstance(precision, str):
        precision = (precision,)
    out = set()
    for p in precision:
        p = str(p).strip().lower()
        if p == "fp32":
            continue
        if p not in PRECISIONS:
            raise InputError(f"unknown TensorRT precision {p!r}; choose from fp32, {', '.join(PRECISIONS)}")
        out.add(p)
    return tuple(sorted(out))


def engine_cache_key(*, model_digest: str, profiles, precision: tuple[str, ...], gpu: dict,
                     trt_version: str, builder_options: dict | None = None) -> str:
    """sha256 of everything an engine depends on, as canonical JSON."""
    payload = {
        "version": KEY_VERSION,
        "model": model_digest,
        "profiles": [[p.name, list(p.min), list(p.opt), list(p.max)] for p in sorted(profiles, key=lambda p: p.name)],
        "precision": list(normalize_precision(precision)),
        "gpu": gpu,
        "tensorrt": str(trt_version),
        "builder": builder_options or {},
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


class EngineCache:
    """Serialized engines in one folder: ``<key[:16]>.plan`` with ``<key[:16]>.plan.json`` beside it."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    @classmethod
    def beside(cls, export_folder: Path) -> "EngineCache":
        """The default cache of an export folder: ``DIR/tensorrt/``."""
        return cls(Path(export_folder) / CACHE_DIR)

    @property
    def timing(self) -> Path:
        """TensorRT's tactic timing cache, shared by every build in this folder."""
        return self.folder / TIMING_CACHE

    def path_for(self, key: str) -> Path:
        if len(key) < 16 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"not an engine cache key: {key!r}")
        return self.folder / f"{key[:16]}.plan"

    def meta_path(self, key: str) -> Path:
        plan = self.path_for(key)
        return plan.with_name(plan.name + ".json")

    def meta(self, key: str) -> dict | None:
        """The entry's meta data, or None when there is no complete entry for exactly this key."""
        try:
            data = json.loads(self.meta_path(key).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) and data.get("key") == key else None

    def get(self, key: str) -> Path | None:
        plan = self.path_for(key)
        return plan if plan.is_file() and self.meta(key) is not None else None

    def put(self, key: str, data: bytes, meta: dict) -> Path:
        """Write the engine, then its meta data, each atomically; the meta file marks the entry complete."""
        plan = self.path_for(key)
        self.folder.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(plan, bytes(data))
        write_json_atomic(self.meta_path(key), {**meta, "key": key, "file": plan.name, "bytes": len(data)})
        return plan
