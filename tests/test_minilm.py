"""The real all-MiniLM-L6-v2 end to end: export, fusion, and embeddings equal to sentence-transformers'."""

import numpy as np
import pytest

from torchship.artifact import Artifact
from torchship.runtimes import RuntimeOptions, create_predictor
from torchship.runtimes.text import TextModel

SENTENCES = [
    "A man is eating food.",
    "A man is riding a white horse on an enclosed ground.",
    "The new movie is awesome, though a little long.",
    "ONNX Runtime makes transformer inference faster on CPUs.",
    "hi",
]

pytestmark = pytest.mark.slow



def test_minilm_fuses_fully(minilm_export):
    m = Artifact.open(minilm_export).manifest
    assert (m.family, m.task, m.num_layers, m.hidden_size) == ("bert", "feature-extraction", 6, 384)
    assert m.text["pooling"] == "mean" and m.text["normalize"] is True and m.text["max_length"] == 256
    fusion = m.variants["optimized"].fusion
    assert fusion.attention == 6 and fusion.counts["EmbedLayerNormalization"] == 1
    assert fusion.counts["SkipLayerNormalization"] == 12 and fusion.warning is None
    for v in m.variants.values():
        assert v.validation.passed and v.validation.max_abs < 1e-4


def test_minilm_embeddings_match_sentence_transformers(minilm_export, minilm_dir):
    from sentence_transformers import SentenceTransformer

    expected = SentenceTransformer(str(minilm_dir), device="cpu").encode(SENTENCES)
    art = Artifact.open(minilm_export)
    for backend in ("ort", "ort-optimized", "torch"):
        got = TextModel.from_artifact(art, create_predictor(art, backend, RuntimeOptions(threads=2))).predict(
            SENTENCES).embeddings
        cos = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
        assert cos.min() > 0.9999, backend
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=backend)
    # Similar sentences are closer than unrelated ones (a sanity check on the real model).
    assert expected[0] @ expected[1] > expected[0] @ expected[3]
