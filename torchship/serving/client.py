"""What the serving commands need of a served model: a target to load-test, the folder it came from, the
local predictor to check its answers against, and one example request."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from torchship.errors import InputError
from torchship.serving.loadtest import ServerError, TritonGRPC, TritonHTTP, split_url

EXAMPLE_TEXTS = ["torchship serves this sentence.", "A second, longer text in the same request."]


def load_texts(path: str | Path | None) -> list[str]:
    if path is None:
        from importlib.resources import files

        text = files("torchship.data").joinpath("sentences.txt").read_text(encoding="utf-8")
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"--texts {path} cannot be read as UTF-8 text: {exc}") from None
    texts = [line.strip() for line in text.splitlines() if line.strip()]
    if not texts:
        raise InputError(f"--texts {path} holds no text; one text per line")
    return texts


def target_for(url: str, model: str, protocol: str):
    host, port = split_url(url, protocol)
    return (TritonGRPC if protocol == "grpc" else TritonHTTP)(host, port, model)


def _http_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def model_parameters(http_url: str, model: str) -> dict[str, str]:
    """The string parameters of a model's config on the server (torchship writes where it came from)."""
    try:
        config = _http_json(f"{http_url.rstrip('/')}/v2/models/{model}/config")
    except urllib.error.HTTPError as exc:
        raise InputError(f"the server has no model {model!r} ({exc.code}); list them with: curl -X POST "
                         f"{http_url}/v2/repository/index") from None
    except (urllib.error.URLError, OSError) as exc:
        raise InputError(f"no server answers at {http_url} ({getattr(exc, 'reason', exc)}); start one with "
                         f"torchship serve REPO") from None
    return {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}


def model_source(url: str, model: str, protocol: str) -> tuple[str, str | None] | None:
    """(the torchship folder the served model was written from, the backend it runs) when that folder is on
    this machine."""
    if protocol != "http":
        return None  # the check needs the config over HTTP; gRPC runs pass --reference
    host, port = split_url(url, "http")
    params = model_parameters(f"http://{host}:{port}", model)
    source = params.get("torchship_source")
    return (source, params.get("torchship_backend")) if source and Path(source, "torchship.json").is_file() else None


def local_reference(folder: str | Path, backend: str | None = None):
    """texts -> answers (embedding vectors, labels, entities or filled masks) from torchship's own predictor on
    this machine."""
    from torchship.artifact import Artifact
    from torchship.runtimes import create_predictor
    from torchship.runtimes.text import TextModel

    from torchship.backends import backend_variants

    artifact = Artifact.open(folder)
    name = backend or "ort"
    model = TextModel.from_artifact(artifact, create_predictor(artifact, name))

    def answers(texts):
        p = model.predict(list(texts))
        for found in (p.entities, p.masks, p.embeddings):
            if found is not None:
                return list(found)
        return list(p.labels)
    variant = next((v for v in backend_variants(name) if v in artifact.manifest.variants), None)
    file = artifact.manifest.variants[variant].file if variant else None
    answers.describe = f"the {name} variant{f' ({file})' if file else ''} of {artifact.folder}, run here"
    return answers


def text_models(http_url: str, inputs: tuple[str, ...] = ("TEXT",)) -> list[str]:
    """The ready models of the server that take TEXT (``inputs``: IMAGE for image models, whose first input it is; an
    image-text model takes TEXT and LABELS beside it), tensor models and ensemble steps left out."""
    index = json.loads(urllib.request.urlopen(urllib.request.Request(
        f"{http_url}/v2/repository/index", data=b"", method="POST"), timeout=10).read())
    found = []
    for m in index:
        if m.get("state") != "READY":
            continue
        meta = _http_json(f"{http_url}/v2/models/{m['name']}")
        names = tuple(i["name"] for i in meta.get("inputs", []))
        if (names == inputs or inputs == ("IMAGE",) and names[:1] == inputs) and "torchship_source" in \
                model_parameters(http_url, m["name"]):
            found.append(m["name"])
    return found


def curl_line(http_url: str, model: str) -> str:
    body = json.dumps({"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [len(EXAMPLE_TEXTS), 1],
                                   "data": EXAMPLE_TEXTS}]})
    return f"curl -s {http_url}/v2/models/{model}/infer -d '{body}'"


def image_line(grpc_url: str, model: str) -> str:
    """A request to an image model: the file's bytes as the IMAGE row (JSON cannot carry them; gRPC can)."""
    return (f"python -c \"import numpy as np, tritonclient.grpc as g; c = g.InferenceServerClient('{grpc_url}'); "
            f"i = g.InferInput('IMAGE', [1, 1], 'BYTES'); i.set_data_from_numpy(np.array([[open('cat.jpg', 'rb')"
            f".read()]], dtype=object)); r = c.infer('{model}', [i]); print(r.get_response())\"")


def example_requests(server) -> list[str]:
    models = text_models(server.http_url)
    images = text_models(server.http_url, ("IMAGE",))
    if not models and not images:
        return ["(no text models here: tensor models take the inputs their config.pbtxt lists)"]
    return ([f"example request ({m}):\n  {curl_line(server.http_url, m)}" for m in models]
            + [f"example request ({m}):\n  {image_line(server.grpc_url, m)}" for m in images])


def smoke_test(server) -> list[str]:
    """One request per text model over HTTP; a ServerError if any fails."""
    lines = []
    for m in text_models(server.http_url):
        host, port = split_url(server.http_url, "http")
        answers = TritonHTTP(host, port, m).connect()(EXAMPLE_TEXTS)
        first = answers[0]
        shown = f"label {first}" if isinstance(first, str) else f"a list of {len(first)}" \
            if isinstance(first, list) else f"vector of {np.asarray(first).shape[-1]}"
        if len(answers) != len(EXAMPLE_TEXTS):
            raise ServerError(f"{m} answered {len(answers)} rows for {len(EXAMPLE_TEXTS)} texts")
        lines.append(f"check: {m} answered {len(answers)} texts ({shown} each)")
    for m in text_models(server.http_url, ("IMAGE",)):
        from torchship.serving.image_client import ImageHTTP, example_png

        host, port = split_url(server.http_url, "http")
        answers = ImageHTTP(host, port, m).connect()([example_png()])
        first = answers[0]
        shown = f"label {first}" if isinstance(first, str) else f"vector of {np.asarray(first).shape[-1]}"
        lines.append(f"check: {m} answered 1 image ({shown})")
    return lines

