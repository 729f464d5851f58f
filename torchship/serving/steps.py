"""The steps of a served torchship text model: decoding the TEXT rows, Hugging Face ``tokenizers``, ONNX
Runtime, and the post-processing of embeddings, labels and hidden states, in groups of texts of similar length.

``torchship triton`` copies this file, as it is, beside every Python model it writes
(``REPO/<model>/1/torchship_steps.py``); the model (``serving/backend.py``) imports it from there. The
pre- and post-processing itself is ``torchship.processing``, which ``predict`` runs, copied beside it as
``torchship_processing``. It needs the served environment's packages (``serving/environment.py``) and
nothing of torchship.
"""

import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # the package torchship copied beside this file
    sys.path.insert(0, HERE)
from torchship_processing import heads, text  # noqa: E402

TASKS = ("embedding", "hidden-states", "classification")
# a group of texts run together pads each to the longest; a text joins the group while the padding
# stays under this share of the group's real tokens (padding is FLOPs spent on nothing)
PADDING_SHARE = 0.25


class RequestError(ValueError):
    """A request the model cannot answer: its message goes back to the client."""


def read_settings(folder):
    with open(os.path.join(folder, "serving.json")) as f:
        return json.load(f)


def decode_texts(raw, name="TEXT"):
    """The rows of a TEXT tensor (bytes objects, shape [n, 1] or [n]) as strings, or RequestError."""
    rows = np.asarray(raw, dtype=object).reshape(-1)
    if rows.size == 0:
        raise RequestError(f"{name} holds no rows; send at least one text")
    texts = []
    for i, value in enumerate(rows):
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise RequestError(f"{name} row {i} is not UTF-8 ({exc.reason} at byte {exc.start}); "
                                   f"send UTF-8 text") from None
        if not isinstance(value, str) or not value.strip():
            raise RequestError(f"{name} row {i} is empty; send some words in every row")
        texts.append(value)
    return texts


class Tokenize:
    """Hugging Face ``tokenizers`` from the exported folder's tokenizer.json, truncating to the
    model's maximum and counting what truncation dropped."""

    def __init__(self, folder, settings):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(os.path.join(folder, settings["tokenizer"]))
        self.max_length = int(settings["max_length"])
        self.strict = bool(settings.get("strict", False))
        self.inputs = list(settings["inputs"])
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_length)
        self.full = Tokenizer.from_file(os.path.join(folder, settings["tokenizer"]))
        self.full.no_padding()
        self.full.no_truncation()
        self.pad_id = int(settings.get("pad_id", 0))

    def encode(self, texts):
        """(list of id lists, list of type-id lists, tokens kept per text, tokens dropped per text)."""
        return self.encodings(texts)[1:]

    def encodings(self, texts):
        """The tokenizer's encodings, then what ``encode`` returns."""
        encodings = self.tokenizer.encode_batch(texts)
        ids = [e.ids for e in encodings]
        types = [e.type_ids for e in encodings]
        kept = [len(i) for i in ids]
        dropped = [0] * len(texts)
        full = [i for i, n in enumerate(kept) if n >= self.max_length]
        if full:
            for i, e in zip(full, self.full.encode_batch([texts[i] for i in full])):
                dropped[i] = len(e.ids) - kept[i]
        if self.strict:
            cut = [i for i, n in enumerate(dropped) if n > 0]
            if cut:
                raise RequestError(f"TEXT row {cut[0]} has {kept[cut[0]] + dropped[cut[0]]} tokens, over the "
                                   f"model's {self.max_length}; shorten it, or serve without strict truncation")
        return encodings, ids, types, kept, dropped

    def feeds(self, ids, types):
        """One padded batch holding exactly the model's inputs."""
        return text.feeds(ids, types, self.inputs, self.pad_id)


def default_threads(settings):
    """The cores this process may use, shared among the model's instances (threads beyond the cores
    collapse a CPU server's throughput)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, int(settings.get("instances") or 1)))


class Model:
    """The ONNX variant on ONNX Runtime's CPU provider, threads and spinning as serving.json says."""

    def __init__(self, folder, settings):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(settings.get("threads") or 0) or default_threads(settings)
        options.inter_op_num_threads = 1
        # the server's other processes (tokenizer, post-processing, other instances) need the cores
        # between runs: threads that spin after a run would hold them
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # graph transformers the variant was measured without, e.g. SkipLayerNormFusion for unfused layer norms
        disabled = {"disabled_optimizers": settings["disabled_optimizers"]} if settings.get("disabled_optimizers") else {}
        self.session = ort.InferenceSession(os.path.join(folder, settings["model"]), options,
                                            providers=["CPUExecutionProvider"], **disabled)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.output = settings["output"]

    def run(self, feeds, outputs=None):
        """The model's ``output`` for ``feeds``; with ``outputs``, the list of those."""
        got = self.session.run(outputs or [self.output], {n: feeds[n] for n in self.inputs})
        return got if outputs else got[0]


class Post:
    """Model output to finished results: pooled, normalised embeddings; labels with scores; or the
    hidden states themselves."""

    def __init__(self, settings):
        self.task = settings["task"]
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r} in serving.json; one of {', '.join(TASKS)}")
        self.pooling = settings.get("pooling")  # None: the graph pools
        self.normalize = bool(settings.get("normalize", False))
        self.labels = settings.get("labels") or []

    def outputs(self, value, mask):
        """{output name: array with the batch first} for one group of texts."""
        if self.task == "hidden-states":
            return {"HIDDEN_STATES": value.astype(np.float32)}
        if self.task == "classification":
            scores, names = heads.classify(value, self.labels)
            scores = scores.astype(np.float32)
            return {"LABEL": strings(names), "SCORE": scores.max(axis=1, keepdims=True), "SCORES": scores}
        return {"EMBEDDING": text.embeddings(value, mask, self.pooling, self.normalize).astype(np.float32)}


def length_groups(lengths):
    """Indices of texts in groups of similar length (each run pads to its longest text)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups, current, real = [], [], 0
    for i in order:
        n = lengths[i]
        if current and n * (len(current) + 1) - (real + n) > PADDING_SHARE * (real + n):
            groups.append(current)
            current, real = [], 0
        current.append(i)
        real += n
    if current:
        groups.append(current)
    return groups


def pad_rows(arrays):
    """Stack arrays [1, L_i, ...] (or [L_i, ...]) into [n, max L, ...] with zeros."""
    width = max(a.shape[0] for a in arrays)
    out = np.zeros((len(arrays), width) + arrays[0].shape[1:], dtype=arrays[0].dtype)
    for row, a in enumerate(arrays):
        out[row, :a.shape[0]] = a
    return out


class TextChain:
    """tokenize -> model -> post for a list of texts, in groups of similar length."""

    inputs = ("TEXT",)

    def __init__(self, folder, settings):
        self.tokenize = Tokenize(folder, settings)
        self.model = Model(folder, settings)
        self.post = Post(settings)

    def __call__(self, texts):
        ids, types, kept, dropped = self.tokenize.encode(texts)
        rows = [None] * len(texts)
        for group in length_groups(kept):
            feeds = self.tokenize.feeds([ids[i] for i in group], [types[i] for i in group])
            out = self.post.outputs(self.model.run(feeds), feeds["attention_mask"])
            for j, i in enumerate(group):
                row = {k: v[j] for k, v in out.items()}
                if "HIDDEN_STATES" in row:
                    row["HIDDEN_STATES"] = row["HIDDEN_STATES"][:kept[i]]
                rows[i] = row
        result = {k: (pad_rows([r[k] for r in rows]) if k == "HIDDEN_STATES" else np.stack([r[k] for r in rows]))
                  for k in rows[0]}
        return {**result, **counts(kept, dropped)}


def strings(values):
    """Strings as a Triton TYPE_STRING output, one row each."""
    return np.array([[v.encode("utf-8")] for v in values], dtype=object)


def counts(kept, dropped):
    """TOKENS (read) and TRUNCATED (cut off) per text."""
    return {"TOKENS": np.array([[n] for n in kept], dtype=np.int32),
            "TRUNCATED": np.array([[n] for n in dropped], dtype=np.int32)}


class TwoTowers:
    """An image-text model (CLIP, SigLIP) served as one model: IMAGE rows (encoded files) or TEXT rows to embeddings of
    unit length in one space, or IMAGE with LABELS to zero-shot scores, as ``torchship predict --labels`` computes them
    (CLIP's softmax over ``exp(logit_scale) * cosine``, SigLIP's sigmoid with its bias per label)."""

    def __init__(self, folder, settings):
        from tokenizers import Tokenizer

        from torchship_processing import image  # Pillow is imported by image models only

        self.image = image
        with open(os.path.join(folder, settings["processor"])) as f:
            self.settings = image.ImageSettings.from_config(json.load(f))
        self.max_pixels = settings.get("max_pixels")
        self.vision = Model(folder, {**settings, "model": settings["vision_model"], "output": "image_embeds"})
        self.text = Model(folder, {**settings, "model": settings["text_model"], "output": "text_embeds"})
        self.tokenizer = Tokenizer.from_file(os.path.join(folder, settings["tokenizer"]))
        self.tokenizer.no_padding()
        self.max_length = int(settings["max_length"])
        self.tokenizer.enable_truncation(self.max_length)
        self.pad_id, self.padding = int(settings.get("pad_id") or 0), settings.get("padding", "longest")
        self.scale, self.bias = float(settings["logit_scale"]), settings.get("logit_bias")
        self.template = settings["template"]

    def texts(self, texts):
        """Text embeddings [n, dim] of unit length; prompts padded to the longest, or to the maximum length where the
        model was trained so (SigLIP)."""
        ids = [e.ids for e in self.tokenizer.encode_batch(texts)]
        feeds = text.prompt_feeds(ids, ["input_ids", "attention_mask"], self.pad_id, self.padding, self.max_length)
        return heads.normalize(self.text.run(feeds))

    def images(self, decoded):
        try:
            pixels = self.image.preprocess([img for img, _ in decoded], self.settings)
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        return heads.normalize(self.vision.run({"pixel_values": pixels}))

    def answer(self, columns):
        """The outputs for one request's columns {IMAGE: decoded images, TEXT: texts, LABELS: label rows}."""
        if ("IMAGE" in columns) == ("TEXT" in columns):
            raise RequestError("send IMAGE (encoded image files) or TEXT, one of them; LABELS with IMAGE gives "
                               "zero-shot scores")
        if "TEXT" in columns:
            if "LABELS" in columns:
                raise RequestError("LABELS go with IMAGE: zero-shot scores images against labels")
            return {"EMBEDDING": self.texts(columns["TEXT"]).astype(np.float32)}
        decoded = columns["IMAGE"]
        notes = strings([json.dumps(list(n)) for _, n in decoded])
        embeds = self.images(decoded)
        if "LABELS" not in columns:
            return {"EMBEDDING": embeds.astype(np.float32), "NOTES": notes}
        rows = columns["LABELS"]
        if len(rows) != len(decoded):
            raise RequestError(f"LABELS has {len(rows)} rows for {len(decoded)} images; send the labels in every row")
        scores, best = [], []
        for row, labels in zip(embeds, rows):
            logits = self.texts([self.template.format(label) for label in labels]) @ row * np.exp(self.scale)
            if self.bias is not None:
                s = 1.0 / (1.0 + np.exp(-(logits + float(self.bias))))
            else:
                s = heads.softmax(logits)
            scores.append(s)
            best.append(labels[int(np.argmax(s))])
        return {"SCORES": np.stack(scores).astype(np.float32), "LABEL": strings(best), "NOTES": notes,
                "EMBEDDING": embeds.astype(np.float32)}
