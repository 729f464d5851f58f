"""Images in, results out: image files decoded and preprocessed as the checkpoint's image processor does
(:mod:`torchship.processing.image`), then run through any predictor. Beside :mod:`torchship.runtimes.text`.

An image classifier gives labels with softmax scores; an image feature extractor its pooled embedding; an
image-text model (CLIP, SigLIP: two graphs, ``text`` and ``vision``) image and text embeddings normalised to unit
length, and zero-shot scores of images against labels put into the prompt template: CLIP's softmax over
``exp(logit_scale) * cosine``, SigLIP's sigmoid of ``exp(logit_scale) * cosine + logit_bias`` per label.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from torchship.artifact import Artifact
from torchship.errors import ArtifactError, InputError, first_line
from torchship.exporters.image_text import TEXT, VISION, ZeroShotSettings
from torchship.exporters.spec import IMAGE_CLASSIFICATION
from torchship.processing.heads import classify, label_names, normalize, softmax
from torchship.processing.text import prompt_feeds
from torchship.runtimes.base import Predictor

PROCESSOR_FILE = "preprocessor_config.json"


def takes_images(artifact: Artifact) -> bool:
    """Whether the folder's model reads pixel values (an image encoder, or an image-text model's vision tower)."""
    return "pixel_values" in artifact.manifest.io().input_names


def image_settings(artifact: Artifact):
    """The folder's image processor settings (processing.image.ImageSettings), from the file the export copied."""
    from torchship.processing.image import ImageSettings

    path = artifact.folder / PROCESSOR_FILE
    if not path.is_file():
        raise ArtifactError(f"{artifact.folder} holds no {PROCESSOR_FILE} (the image processor's settings); save "
                            f"the checkpoint's image processor into it (processor.save_pretrained('{artifact.folder}'))")
    try:
        return ImageSettings.from_config(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path} cannot be read: {exc}") from None


def _items(images) -> list:
    """One image or a sequence of them (paths, bytes, PIL images) as a list."""
    return [images] if isinstance(images, (str, Path, bytes, bytearray)) or not hasattr(images, "__len__") \
        else list(images)


def _name(item, index: int) -> str:
    """What a row is called: an image's path, else its place in the batch."""
    return str(item) if isinstance(item, (str, Path)) else f"image {index + 1}"


@dataclass(frozen=True)
class ImagePrediction:
    """Results per input (image files or texts): embeddings, or scores over labels."""

    names: tuple[str, ...]  # what each row is: an image's path, a text
    embeddings: np.ndarray | None = None  # (n, width): the pooled embedding (unit length for image-text models)
    scores: np.ndarray | None = None  # (n, labels): softmax (classifiers, CLIP) or sigmoid (SigLIP) scores
    labels: tuple[str, ...] = ()  # the label of each column of ``scores``
    logits: np.ndarray | None = None
    notes: tuple[str, ...] = ()  # what decoding said (an animated image's first frame, a conversion)

    def top(self, row: int, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` best (label, score) of a row, best first."""
        order = np.argsort(-self.scores[row], kind="stable")[:k]
        return [(self.labels[i], float(self.scores[row, i])) for i in order]

    def to_json(self) -> list[dict]:
        rows = []
        for i, name in enumerate(self.names):
            row = {"input": name}
            if self.scores is not None:
                row.update(label=self.top(i, 1)[0][0], score=self.top(i, 1)[0][1],
                           scores={label: float(s) for label, s in zip(self.labels, self.scores[i])})
            if self.embeddings is not None:
                row["embedding"] = self.embeddings[i].tolist()
            rows.append(row)
        return rows


class ImageModel:
    """An image model's folder run through predictors (one per graph) with its preprocessing and heads."""

    def __init__(self, artifact: Artifact, predictors: dict[str, Predictor], *, settings=None, tokenizer=None):
        self.artifact = artifact
        self.task = artifact.manifest.task
        self.predictors = predictors
        self._settings = settings
        self._tokenizer = tokenizer
        self.zero_shot_settings = None
        if TEXT in predictors:
            self.zero_shot_settings = ZeroShotSettings.from_json(artifact.manifest.text)

    @classmethod
    def from_artifact(cls, artifact: Artifact, backend: str = "ort", options=None) -> "ImageModel":
        """Predictors of ``backend`` for every graph of the folder (nothing loads until first used)."""
        from torchship.runtimes import RuntimeOptions, create_predictor, graph_names

        options = options or RuntimeOptions()
        names = graph_names(artifact)
        if len(names) == 1 and not takes_images(artifact):
            raise InputError(f"{artifact.folder} holds a model that reads no images ({artifact.manifest.task}); "
                             "predict it with text")
        graphs = {n: create_predictor(artifact, backend, options, graph=n if len(names) > 1 else None) for n in names}
        return cls(artifact, graphs)

    def __enter__(self) -> "ImageModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for predictor in self.predictors.values():
            predictor.deactivate()

    @property
    def two_towers(self) -> bool:
        return TEXT in self.predictors

    @property
    def settings(self):
        if self._settings is None:
            self._settings = image_settings(self.artifact)
        return self._settings

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from torchship.runtimes.text import load_tokenizer

            self._tokenizer = load_tokenizer(self.artifact)
        return self._tokenizer

    def pixels(self, images) -> tuple[np.ndarray, tuple[str, ...]]:
        """(pixel values [n, c, h, w], decoding notes) of images given as paths, bytes or PIL images."""
        from torchship.processing.image import decode, open_image, preprocess

        images = _items(images)
        if not images:
            raise InputError("no images given; pass at least one image")
        missing = [str(i) for i in images if isinstance(i, (str, Path)) and not Path(i).is_file()]
        if missing:
            raise InputError(f"{missing[0]}: no such file")
        opened, notes = [], []
        for index, item in enumerate(images):
            try:
                if isinstance(item, (str, Path)):
                    image, said = open_image(item)
                elif isinstance(item, (bytes, bytearray)):
                    image, said = decode(bytes(item))
                else:
                    image, said = item, ()
            except (ValueError, OSError) as exc:  # processing.image says what is wrong with the bytes in a line
                raise InputError(f"{_name(item, index)}: {first_line(exc)}") from None
            opened.append(image)
            notes.extend(f"{_name(item, index)}: {n}" for n in said)
        try:
            return preprocess(opened, self.settings), tuple(notes)
        except ValueError as exc:
            raise InputError(f"{first_line(exc)}") from None

    def _vision(self) -> Predictor:
        return self.predictors.get(VISION) or next(iter(self.predictors.values()))

    def predict(self, images, *, labels=None, template: str | None = None) -> ImagePrediction:
        """What the folder's task gives: labels with scores (classifiers; image-text models with ``labels``), else
        embeddings (an image-text model without labels: its image embeddings)."""
        if labels:
            return self.zero_shot(images, labels, template=template)
        if self.task == IMAGE_CLASSIFICATION:
            return self.classify(images)
        return self.embed_images(images)

    def classify(self, images) -> ImagePrediction:
        """Softmax scores over the manifest's labels, for an image classifier."""
        if self.task != IMAGE_CLASSIFICATION:
            raise InputError(f"{self.artifact.folder} does {self.task}, not image classification")
        pixels, notes = self.pixels(images)
        logits = self._vision().infer({"pixel_values": pixels})["logits"]
        scores, _ = classify(logits, self.artifact.manifest.text.get("labels"))
        names = label_names(self.artifact.manifest.text.get("labels"), logits.shape[-1])
        return ImagePrediction(self._names(images), scores=scores, labels=tuple(names), logits=logits, notes=notes)

    def embed_images(self, images) -> ImagePrediction:
        """Image embeddings: an image-text model's image_embeds at unit length, else the pooled embedding (a
        feature extractor's pooler output, its first token's hidden state where it has none)."""
        pixels, notes = self.pixels(images)
        out = self._vision().infer({"pixel_values": pixels})
        if "image_embeds" in out:
            vectors = normalize(out["image_embeds"])
        elif "pooler_output" in out:
            vectors = out["pooler_output"].reshape(len(pixels), -1)
        elif "last_hidden_state" in out:
            vectors = out["last_hidden_state"][:, 0]
        else:
            raise InputError(f"{self.artifact.folder} gives no embedding ({', '.join(out)}); it does {self.task}")
        return ImagePrediction(self._names(images), embeddings=vectors, notes=notes)

    def _text_feeds(self, texts: list[str]) -> dict[str, np.ndarray]:
        settings = self.zero_shot_settings
        ids = self.tokenizer(texts, truncation=True, max_length=settings.max_length)["input_ids"]
        # the served model's own step: pad id as it reads it (a tokenizer without a pad token pads with 0)
        return prompt_feeds(ids, self.predictors[TEXT].input_names, int(self.tokenizer.pad_token_id or 0),
                            settings.padding, settings.max_length)

    def embed_texts(self, texts) -> ImagePrediction:
        """Text embeddings of an image-text model (its text tower), at unit length: in one space with its images'."""
        if not self.two_towers:
            raise InputError(f"{self.artifact.folder} has no text tower; text embeddings need an image-text model "
                             "(CLIP, SigLIP)")
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise InputError("give one or more non-empty texts")
        out = self.predictors[TEXT].infer(self._text_feeds(texts))
        return ImagePrediction(tuple(texts), embeddings=normalize(out["text_embeds"]))

    def zero_shot(self, images, labels, *, template: str | None = None) -> ImagePrediction:
        """Scores of each image against ``labels`` put into ``template`` (None: the folder's): CLIP's softmax over
        the labels, SigLIP's sigmoid per label."""
        if not self.two_towers:
            raise InputError(f"labels are for zero-shot (image-text) models; {self.artifact.folder} does {self.task}: "
                             "drop --labels")
        labels = [str(label).strip() for label in labels if str(label).strip()]
        if not labels:
            raise InputError("give at least one label (--labels \"a cat,a dog\")")
        settings = self.zero_shot_settings
        template = settings.template if template is None else template
        if "{}" not in template:
            raise InputError(f"the template {template!r} has no {{}} for the label: e.g. \"a photo of a {{}}.\"")
        image = self.embed_images(images)
        text = self.embed_texts([template.format(label) for label in labels]).embeddings
        logits = image.embeddings @ text.T * np.exp(settings.logit_scale)
        if settings.sigmoid:
            logits = logits + settings.logit_bias
            scores = 1.0 / (1.0 + np.exp(-logits))
        else:
            scores = softmax(logits)
        return ImagePrediction(image.names, scores=scores, labels=tuple(labels), logits=logits, notes=image.notes)

    @staticmethod
    def _names(images) -> tuple[str, ...]:
        return tuple(_name(item, i) for i, item in enumerate(_items(images)))
