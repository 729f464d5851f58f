"""Model folders a user writes by hand into a shared Triton repository: a Python-backend model (doubles X),
an ensemble of it, an onnxruntime model and an ensemble of that, a folder that is no model, and a README."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

PYTHON_MODEL = '''import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", (x * 2).astype(np.float32))]))
        return out
'''
IO = 'max_batch_size: 0\ninput { name: "X" data_type: TYPE_FP32 dims: [ 2 ] }\n' \
     'output { name: "Y" data_type: TYPE_FP32 dims: [ 2 ] }\n'


def _ensemble(name: str, step: str) -> str:
    return (f'name: "{name}"\nplatform: "ensemble"\n{IO}ensemble_scheduling {{ step [ {{ model_name: "{step}" '
            f'model_version: -1 input_map {{ key: "X" value: "X" }} output_map {{ key: "Y" value: "Y" }} }} ] }}\n')


def write_hand_models(repo: Path, onnx_file: Path) -> dict[str, str]:
    """Write them into ``repo``; returns {relative path: sha256} of every file written, to check they stay."""
    files = {
        "README.md": "# Our team's models\n\nAsk Ana before changing `hand`.\n",
        "hand/config.pbtxt": f'name: "hand"\nbackend: "python"\n{IO}',
        "hand/1/model.py": PYTHON_MODEL,
        "hand_ens/config.pbtxt": _ensemble("hand_ens", "hand"),
        "theirs/config.pbtxt": 'name: "theirs"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 0\n',
        "theirs_ens/config.pbtxt": _ensemble("theirs_ens", "theirs"),
        "notes/todo.txt": "move theirs to the GPU box\n",
    }
    for rel, text in files.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    for folder in ("hand_ens", "theirs_ens"):  # Triton loads an ensemble only with a (empty) version folder
        (repo / folder / "1").mkdir()
    (repo / "theirs" / "1").mkdir()
    shutil.copyfile(onnx_file, repo / "theirs" / "1" / "model.onnx")
    return snapshot(repo, ("README.md", "hand", "hand_ens", "theirs", "theirs_ens", "notes"))


def snapshot(repo: Path, names) -> dict[str, str]:
    out = {}
    for name in names:
        place = repo / name
        for path in sorted([place] if place.is_file() else place.rglob("*")):
            if "__pycache__" in path.parts:  # the Python backend compiles model.py where it lies
                continue
            if path.is_file():
                out[path.relative_to(repo).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
            elif path.is_dir():
                out[path.relative_to(repo).as_posix() + "/"] = ""
    return out
