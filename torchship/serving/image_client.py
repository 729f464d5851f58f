"""Clients of a served image model: image files read as bytes and sent as the ``IMAGE`` rows (over HTTP with
Triton's binary tensor extension, as JSON cannot carry raw bytes; over gRPC as a BYTES tensor), and the local
reference the answers are checked against: the same decoding and preprocessing (``torchship.processing.image``)
and heads, run on this machine's predictor of the variant the server runs."""

from __future__ import annotations

import http.client
import json
import struct
from pathlib import Path

import numpy as np

from torchship.errors import InputError
from torchship.serving.loadtest import PROTOCOLS, ServerError, Target, TritonGRPC, answers_of, split_url

# the ONNX head outputs read for each task, in the order tried (as the server's chain reads them)
EMBEDDING_OUTPUTS = ("pooler_output", "last_hidden_state")


def load_images(folder: str | Path) -> list[bytes]:
    """The bytes of every file in ``folder`` (sorted by name; hidden files left out): what a client sends."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--images {folder} is not a folder; give a folder of image files")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise InputError(f"--images {folder} holds no files; put a few PNG or JPEG files in it")
    return [p.read_bytes() for p in files]


def binary_body(images: list[bytes]) -> tuple[bytes, int]:
    """(request body, JSON header length) of Triton's binary tensor extension for one IMAGE BYTES tensor: the JSON
    header, then each row's length (4 bytes, little-endian) and bytes."""
    data = b"".join(struct.pack("<I", len(b)) + bytes(b) for b in images)
    header = json.dumps({"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [len(images), 1],
                                     "parameters": {"binary_data_size": len(data)}}]}).encode()
    return header + data, len(header)


class ImageHTTP(Target):
    """``POST /v2/models/NAME/infer`` with the images as binary data; the answers come back as JSON."""

    def __init__(self, host: str, port: int, model: str, timeout_s: float = 30.0):
        self.host, self.port, self.model, self.timeout_s = host, port, model, timeout_s

    def connect(self):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        path = f"/v2/models/{self.model}/infer"

        def send(images):
            body, header = binary_body(images)
            try:
                conn.request("POST", path, body, {"Inference-Header-Content-Length": str(header),
                                                  "Content-Type": "application/octet-stream"})
                response = conn.getresponse()
                data = response.read()
                size = response.getheader("Inference-Header-Content-Length")
            except (OSError, http.client.HTTPException):
                conn.close()  # the next request reconnects
                raise
            if size is not None:  # a JSON header before binary outputs: only the header holds what is read here
                data = data[:int(size)]
            if response.status != 200:
                try:
                    message = json.loads(data).get("error") or data.decode()
                except (ValueError, UnicodeDecodeError):
                    message = repr(data[:200])
                raise ServerError(f"HTTP {response.status}: {message}")
            return answers_of({o["name"]: o for o in json.loads(data)["outputs"]})
        return send


class ImageGRPC(TritonGRPC):
    """An image model over gRPC: each row one encoded image file."""

    input_name = "IMAGE"

    @staticmethod
    def encoded(row) -> bytes:
        return bytes(row)


def image_target_for(url: str, model: str, protocol: str) -> Target:
    if protocol not in PROTOCOLS:
        raise InputError(f"unknown protocol {protocol!r}; use {' or '.join(PROTOCOLS)}")
    host, port = split_url(url, protocol)
    return (ImageGRPC if protocol == "grpc" else ImageHTTP)(host, port, model)


def local_image_results(folder: str | Path, backend: str | None = None):
    """images (bytes) -> {"labels", "scores"} (classifiers) or {"embeddings"} (feature extractors; an image-text
    model's at unit length): ``torchship predict``'s ``ImageModel`` on the folder's variant of ``backend`` (default
    ort), the same decoding, preprocessing and heads the server runs."""
    from torchship.artifact import Artifact
    from torchship.exporters.spec import IMAGE_CLASSIFICATION
    from torchship.runtimes.images import ImageModel

    artifact = Artifact.open(folder)
    model = ImageModel.from_artifact(artifact, backend or "ort")
    classifier = artifact.manifest.task == IMAGE_CLASSIFICATION and not model.two_towers

    def results(images: list[bytes]) -> dict:
        images = [bytes(b) for b in images]
        if classifier:
            found = model.classify(images)
            return {"labels": [found.top(i, 1)[0][0] for i in range(len(images))],
                    "scores": found.scores.astype(np.float32)}
        return {"embeddings": model.embed_images(images).embeddings.astype(np.float32)}
    return results


def image_reference(folder: str | Path, backend: str | None = None):
    """images -> answers (labels, or embedding vectors) as ``check_answers`` compares them with the server's."""
    from torchship.artifact import Artifact

    results = local_image_results(folder, backend)

    def answers(images):
        found = results(list(images))
        return list(found["labels"]) if "labels" in found else list(found["embeddings"])
    answers.describe = f"the {backend or 'ort'} variant of {Artifact.open(folder).folder}, run here on the same images"
    return answers


def example_png(side: int = 48) -> bytes:
    """A small generated PNG (a colour gradient): the one request ``serve --check`` sends an image model."""
    import io

    from PIL import Image

    ramp = np.linspace(0, 255, side, dtype=np.uint8)
    pixels = np.stack([np.tile(ramp, (side, 1)), np.tile(ramp[:, None], (1, side)), np.full((side, side), 128,
                                                                                             np.uint8)], axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()
