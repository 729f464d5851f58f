"""The Python-backend model of a served torchship repository: text in, finished results out.

This file is copied, as it is, into every Python model that ``torchship triton`` writes
(``REPO/<model>/1/model.py``), beside ``serving.json``, which says what the copy does:

- ``text``: the whole chain in one model (tokenize, run the ONNX variant with ONNX Runtime,
  post-process): what ``--runtime python`` writes by default; no tensor leaves the process.
- ``image``: an image folder's whole chain (decode the IMAGE bytes, preprocess as the checkpoint's image
  processor does, run the variant, labels or embeddings out); Pillow is imported only here.
- ``tokenize``, ``model``, ``post``: the three steps of an ensemble, when the model step runs on a
  native Triton backend (onnxruntime, TensorRT, OpenVINO) or ``--layout ensemble`` is asked for.

It needs numpy, Hugging Face ``tokenizers`` and ``onnxruntime`` in the server's Python
environment, and nothing of torchship, so the repository serves on any tritonserver with the
Python backend. Beside it lie the steps it is built from (``torchship_steps.py``, from
``serving/steps.py``) and a copy of torchship's own pre- and post-processing (``torchship_processing/``, from
``torchship/processing/``), so the server's results are ``torchship predict``'s. Every request gets its own answer or its own error; one
bad request in a batch does not fail the others.
"""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the files torchship wrote beside this one
from torchship_steps import (Model, Post, RequestError, TextChain, Tokenize, counts, decode_texts,  # noqa: E402
                             length_groups, read_settings, strings)
from torchship_processing.heads import classify, label_names  # noqa: E402

TOKEN_TASKS = {"entities": "ENTITIES", "fill-mask": "MASKS"}  # per-text JSON read off the tokens


class TokenChain:
    """tokenize -> model -> per-text results read off the tokens: entities (grouped as serving.json's
    aggregation says) or the likeliest tokens for each mask, one JSON list per text."""

    inputs = ("TEXT",)

    def __init__(self, folder, settings):
        self.tokenize = Tokenize(folder, settings)
        self.model = Model(folder, settings)
        self.task = settings["task"]
        self.labels = settings.get("labels") or []
        if self.task == "entities":
            from torchship_processing import entities

            self.lib = entities
            self.pieces = entities.Pieces(self.tokenize.tokenizer, unk_id=settings.get("unk_id"))
            self.aggregation = settings.get("aggregation", "simple")
        else:
            from torchship_processing import fill_mask as masks

            self.lib = masks
            self.mask_token, self.mask_id = settings["mask_token"], int(settings["mask_id"])
            self.pad_id = settings.get("pad_token_id")
            clean = masks.clean_up if settings.get("clean_up_spaces") else (lambda text: text)
            tokenizer = self.tokenize.tokenizer
            self.decode = lambda ids, skip: clean(tokenizer.decode(ids, skip_special_tokens=skip))

    def _one(self, text, encoding, logits):
        if self.task == "entities":
            labels = label_names(self.labels, logits.shape[-1])
            special = np.asarray(encoding.special_tokens_mask, dtype=bool)
            tokens = self.lib.tokens_of(text, self.pieces, encoding.ids, logits, encoding.offsets, special)
            return self.lib.entities(tokens, labels, self.aggregation, self.pieces)
        return next(self.lib.fill(np.asarray([encoding.ids]), logits[None], self.mask_id, self.pad_id, self.decode))

    def __call__(self, texts):
        if self.task == "fill-mask":
            missing = [i for i, t in enumerate(texts) if self.mask_token not in t]
            if missing:
                raise RequestError(f"TEXT row {missing[0]} has no {self.mask_token} token; fill-mask predicts the "
                                   f"words at {self.mask_token}: e.g. \"the movie was {self.mask_token}.\"")
        encodings, ids, types, kept, dropped = self.tokenize.encodings(texts)
        rows = [None] * len(texts)
        for group in length_groups(kept):
            logits = self.model.run(self.tokenize.feeds([ids[i] for i in group], [types[i] for i in group]))
            for j, i in enumerate(group):
                rows[i] = json.dumps(self._one(texts[i], encodings[i], logits[j][:kept[i]]))
        return {TOKEN_TASKS[self.task]: strings(rows), **counts(kept, dropped)}


class AnswerChain:
    """(question, context) -> the best span of the context, over as many overlapping windows as a long
    context needs, as ``torchship predict --question`` finds it."""

    inputs = ("QUESTION", "TEXT")

    def __init__(self, folder, settings):
        from tokenizers import Tokenizer

        from torchship_processing import answers

        self.lib = answers
        self.tokenize = Tokenize(folder, settings)
        self.windowed = Tokenizer.from_file(os.path.join(folder, settings["tokenizer"]))
        self.windowed.no_padding()
        self.special = int(settings.get("special_pair", 0))
        self.max_length = int(settings["max_length"])
        self.model = Model(folder, settings)

    def windows(self, question, context):
        problem = self.lib.pair_problem(question, context)
        if problem:
            raise RequestError(problem)
        asked = len(self.tokenize.full.encode(question, add_special_tokens=False).ids)
        try:
            room = self.lib.context_room(asked, self.special, self.max_length)
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        self.windowed.enable_truncation(self.max_length, stride=self.lib.window_stride(room),
                                        strategy="only_second")
        first = self.windowed.encode(question, context)
        return [first] + list(first.overflowing)

    def __call__(self, pairs):
        found = []
        for question, context in pairs:
            wins = self.windows(question, context)
            feeds = self.tokenize.feeds([w.ids for w in wins], [w.type_ids for w in wins])
            start, end = self.model.run(feeds, ["start_logits", "end_logits"])
            found.append((self.lib.answer([w.sequence_ids for w in wins], [w.offsets for w in wins], start, end,
                                          context), len(wins)))
        return {"ANSWER": strings([a.answer for a, _ in found]),
                "SCORE": np.array([[a.score] for a, _ in found], dtype=np.float32),
                "START": np.array([[a.start] for a, _ in found], dtype=np.int32),
                "END": np.array([[a.end] for a, _ in found], dtype=np.int32),
                "WINDOWS": np.array([[n] for _, n in found], dtype=np.int32)}


IMAGE_TASKS = ("classification", "embedding")


def decode_images(raw, max_pixels=None, name="IMAGE"):
    """The rows of an IMAGE tensor (bytes objects, shape [n, 1] or [n]) as (Pillow image, notes) pairs, or
    RequestError naming the first row that is not an image Pillow can read within the pixel limit."""
    from torchship_processing import image

    rows = np.asarray(raw, dtype=object).reshape(-1)
    if rows.size == 0:
        raise RequestError(f"{name} holds no rows; send at least one image")
    decoded = []
    for i, value in enumerate(rows):
        try:
            decoded.append(image.decode(bytes(value), max_pixels=max_pixels))
        except ValueError as exc:
            raise RequestError(f"{name} row {i}: {exc}") from None
    return decoded


def embedding_of(outputs, output):
    """One embedding per image from the graph's outputs: the pooler output flattened (a CNN's is [n, c, 1, 1]),
    or the first token of the hidden states."""
    if output == "last_hidden_state":
        return outputs[:, 0]
    return outputs.reshape(outputs.shape[0], -1)


class ImageChain:
    """decode -> pixel values -> ONNX Runtime -> labels or embeddings, for the images of a whole Triton batch."""

    inputs = ("IMAGE",)

    def __init__(self, folder, settings):
        self.task = settings["task"]
        if self.task not in IMAGE_TASKS:
            raise ValueError(f"unknown image task {self.task!r} in serving.json; one of {', '.join(IMAGE_TASKS)}")
        from torchship_processing import image  # Pillow is imported by image models only

        self.image = image
        with open(os.path.join(folder, settings["processor"])) as f:
            self.settings = image.ImageSettings.from_config(json.load(f))
        self.max_pixels = settings.get("max_pixels")
        self.labels = settings.get("labels") or []
        self.model = Model(folder, settings)

    def decode_rows(self, raw, name):
        return decode_images(raw, self.max_pixels, name)

    def __call__(self, decoded):
        try:
            pixels = self.image.preprocess([img for img, _ in decoded], self.settings)
        except ValueError as exc:  # the backend then runs each request alone to find whose image it was
            raise RequestError(str(exc)) from None
        value = self.model.run({"pixel_values": pixels})
        notes = strings([json.dumps(list(n)) for _, n in decoded])
        if self.task == "classification":
            scores, names = classify(value, self.labels)
            scores = scores.astype(np.float32)
            return {"LABEL": strings(names), "SCORE": scores.max(axis=1, keepdims=True), "SCORES": scores,
                    "NOTES": notes}
        return {"EMBEDDING": embedding_of(value, self.model.output).astype(np.float32), "NOTES": notes}


def text_chain(folder, settings):
    """The whole chain serving.json's task asks for."""
    task = settings["task"]
    if task == "question-answering":
        return AnswerChain(folder, settings)
    if task in TOKEN_TASKS:
        return TokenChain(folder, settings)
    return TextChain(folder, settings)


class TritonPythonModel:
    """Triton's entry point; ``serving.json`` in the version folder says which step this copy is."""

    def initialize(self, args):
        import triton_python_backend_utils as pb_utils

        self.pb = pb_utils
        folder = os.path.join(args["model_repository"], args["model_version"])
        settings = read_settings(folder)
        self.step = settings["step"]
        self.output_names = [o["name"] for o in json.loads(args["model_config"])["output"]]
        if self.step == "text":
            self.chain = text_chain(folder, settings)
        elif self.step == "image":  # images decoded and preprocessed in the server
            self.chain = ImageChain(folder, settings)
        elif self.step == "image-text":  # IMAGE, TEXT or IMAGE with LABELS; requests of one kind batched together
            from torchship_steps import TwoTowers

            self.towers = TwoTowers(folder, settings)
        elif self.step == "tokenize":
            self.tokenize = Tokenize(folder, settings)
        elif self.step == "model":
            self.model = Model(folder, settings)
        elif self.step == "post":
            self.post = Post(settings)
        else:
            raise ValueError(f"unknown step {self.step!r} in {folder}/serving.json")

    def _answer(self, arrays):
        return self.pb.InferenceResponse(output_tensors=[
            self.pb.Tensor(name, arrays[name]) for name in self.output_names if name in arrays])

    def _error(self, message, bad_input=True):
        """An error answer: the client's request (HTTP 400, gRPC INVALID_ARGUMENT) or the model's (500)."""
        error = self.pb.TritonError
        code = getattr(error, "INVALID_ARG" if bad_input else "INTERNAL", None)
        return self.pb.InferenceResponse(output_tensors=[],
                                         error=error(message) if code is None else error(message, code))

    def _input(self, request, name):
        tensor = self.pb.get_input_tensor_by_name(request, name)
        if tensor is None:
            raise RequestError(f"the request has no {name} input")
        return tensor.as_numpy()

    def execute(self, requests):
        if self.step in ("text", "image"):
            return self._texts(requests)
        if self.step == "image-text":
            return self._towers(requests)
        answers = []
        for request in requests:
            try:
                answers.append(self._answer(self._one(request)))
            except RequestError as exc:
                answers.append(self._error(str(exc)))
            except Exception as exc:  # noqa: BLE001 - the server must answer and keep serving
                answers.append(self._error(f"{self.step} failed: {type(exc).__name__}: {exc}", bad_input=False))
        return answers

    def _columns(self, request):
        """An image-text request's inputs: {IMAGE: decoded images, TEXT: texts, LABELS: label rows}."""
        columns = {}
        for name in ("IMAGE", "TEXT", "LABELS"):
            tensor = self.pb.get_input_tensor_by_name(request, name)
            if tensor is None:
                continue
            raw = tensor.as_numpy()
            if name == "IMAGE":
                columns[name] = decode_images(raw, self.towers.max_pixels)
            elif name == "TEXT":
                columns[name] = decode_texts(raw)
            else:
                columns[name] = [decode_texts(row, "LABELS") for row in np.asarray(raw, dtype=object)]
        return columns

    def _towers(self, requests):
        """Image-text requests of one batch: those with IMAGE alone run as one batch of the vision graph, those with
        TEXT alone as one of the text graph; the others (IMAGE with LABELS, a wrong mix) one by one."""
        answers, parsed = [None] * len(requests), {}
        for r, request in enumerate(requests):
            try:
                parsed[r] = self._columns(request)
            except RequestError as exc:
                answers[r] = self._error(str(exc))
        for kind in ("IMAGE", "TEXT"):
            group = [r for r, columns in parsed.items() if set(columns) == {kind}]
            if len(group) < 2:
                continue
            try:
                merged = self.towers.answer({kind: [row for r in group for row in parsed[r][kind]]})
            except Exception:  # noqa: BLE001 - one request's fault: each runs alone below and gets its own answer
                continue
            start = 0
            for r in group:
                rows = len(parsed.pop(r)[kind])
                answers[r] = self._answer({k: v[start:start + rows] for k, v in merged.items()})
                start += rows
        for r, columns in parsed.items():
            try:
                answers[r] = self._answer(self.towers.answer(columns))
            except RequestError as exc:
                answers[r] = self._error(str(exc))
            except Exception as exc:  # noqa: BLE001 - the server must answer and keep serving
                answers[r] = self._error(f"{self.step} failed: {type(exc).__name__}: {exc}", bad_input=False)
        return answers

    def _one(self, request):
        if self.step == "tokenize":
            texts = decode_texts(self._input(request, "TEXT"))
            ids, types, kept, dropped = self.tokenize.encode(texts)
            out = {**self.tokenize.feeds(ids, types), **counts(kept, dropped)}
            if "attention_mask" not in out:
                out["attention_mask"] = (out["input_ids"] != self.tokenize.pad_id).astype(np.int64)
            return out
        if self.step == "model":
            feeds = {n: self._input(request, n) for n in self.model.inputs}
            return {self.model.output: self.model.run(feeds)}
        return self.post.outputs(self._input(request, "MODEL_OUTPUT"), self._input(request, "attention_mask"))

    def _rows(self, request):
        """The request's texts, or (question, context) pairs for a question-answering chain (Triton has checked
        that its inputs have the same rows)."""
        decode = getattr(self.chain, "decode_rows", decode_texts)  # an image chain decodes its own rows
        columns = [decode(self._input(request, name), name) for name in self.chain.inputs]
        return columns[0] if len(columns) == 1 else list(zip(*columns))

    def _texts(self, requests):
        """Every request of the batch Triton formed, run together in groups of similar length."""
        texts, spans, answers = [], {}, [None] * len(requests)
        for r, request in enumerate(requests):
            try:
                rows = self._rows(request)
                spans[r] = (len(texts), len(texts) + len(rows))
                texts.extend(rows)
            except RequestError as exc:
                answers[r] = self._error(str(exc))
        if texts:
            try:
                result = self.chain(texts)
            except RequestError:  # strict truncation: find the requests it belongs to
                result = None
            except Exception as exc:  # noqa: BLE001
                for r in spans:
                    answers[r] = self._error(f"the model failed: {type(exc).__name__}: {exc}", bad_input=False)
                return answers
            for r, (a, b) in spans.items():
                if result is None:
                    try:
                        answers[r] = self._answer(self.chain(texts[a:b]))
                    except RequestError as exc:
                        answers[r] = self._error(str(exc))
                    continue
                part = {k: v[a:b] for k, v in result.items()}
                if "HIDDEN_STATES" in part:
                    part["HIDDEN_STATES"] = part["HIDDEN_STATES"][:, :max(1, int(part["TOKENS"].max()))]
                answers[r] = self._answer(part)
        return answers
