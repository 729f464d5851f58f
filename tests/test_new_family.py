"""Adding a family is one spec: a family defined entirely in this file, registered, and run through the
public API (export with validation, optimize, bench against eager PyTorch, predict from text) with no
edit to any torchship module.

The family is deliberately not a transformers model: a bag-of-embeddings text encoder with its own
config file, its own weights file (safetensors) and its own way of loading both.
"""

from __future__ import annotations

import json
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tiny import make_tokenizer, vocabulary
from torchship import loading
from torchship.artifact import Artifact
from torchship.benchmarks.run import BenchOptions, run_benchmark
from torchship.benchmarks.timing import TimingPlan
from torchship.cli import main
from torchship.errors import InputError
from torchship.exporters.export import export
from torchship.exporters.inputs import TextShape, make_text_inputs
from torchship.exporters.spec import (BATCH, ENCODE, FEATURE_EXTRACTION, SEQUENCE, FamilyGroup, ModelIO,
                                      NormalizedConfig, SpecDefaults, TensorSpec, register, unregister)
from torchship.optimizers import optimize
from torchship.runtimes import RuntimeOptions, create_predictor
from torchship.runtimes.text import TextModel

MODEL_TYPE = "toy-bag-encoder"
HIDDEN, MAX_POSITIONS = 24, 64


class BagEncoder(torch.nn.Module):
    """Token embeddings plus position embeddings, one projection, tanh: hidden states per token."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.tokens = torch.nn.Embedding(config.vocab_size, config.hidden_size)
        self.positions = torch.nn.Embedding(config.max_positions, config.hidden_size)
        self.proj = torch.nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, input_ids, attention_mask):
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        hidden = self.tokens(input_ids) + self.positions(pos)[None]
        return torch.tanh(self.proj(hidden)) * attention_mask[..., None].to(hidden.dtype)


def _config(data: dict):
    return types.SimpleNamespace(**data)


class _Wrapper(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return (self.model(input_ids, attention_mask),)


@dataclass(frozen=True)
class BagSpec(SpecDefaults):
    family: str = "toy-bag"
    model_types: tuple[str, ...] = (MODEL_TYPE,)
    group: FamilyGroup = FamilyGroup("toy", "toy bag encoders", "a toy bag encoder", "torchship export")
    tasks: tuple[str, ...] = (FEATURE_EXTRACTION,)
    ort_model_type: str = ""  # ONNX Runtime's transformer optimizer has nothing for it
    atol: float = 1e-5
    default_exporter: str = "torchscript"
    fusion_hint: str = ""
    dummy_case: TextShape = TextShape(2, 16)
    validation_cases: tuple[TextShape, ...] = (TextShape(1, 9), TextShape(3, 23, (23, 11, 4)))
    bench_inputs: str = "random token ids, seeded"
    phases: tuple[str, ...] = (ENCODE,)
    text_api: str | None = "predict"

    # Where checkpoints come from (what a source mixin gives the built-in families).
    def load_config(self, ref, *, trust_remote_code: bool = False):
        return _config(json.loads((ref.path / "config.json").read_text()))

    def load_model(self, ref, config, task, **_):
        from safetensors.torch import load_file

        model = BagEncoder(config)
        model.load_state_dict(load_file(ref.path / "model.safetensors"))
        return model.eval()

    def load_tokenizer(self, ref, *, trust_remote_code: bool = False):
        return loading.load_tokenizer(ref)

    def save_config(self, model, folder: Path) -> None:
        (Path(folder) / "config.json").write_text(json.dumps(vars(model.config)))

    def load_saved_config(self, folder: Path):
        return _config(json.loads((Path(folder) / "config.json").read_text()))

    def prepare_copy(self, model, attn_implementation):
        return model

    def text_settings(self, folder, config, tokenizer, task: str) -> dict:
        return {"pooling": "mean", "normalize": True, "max_length": config.max_positions, "labels": None,
                "settings_from": "toy spec"}

    # What the family is.
    def default_task(self, config) -> str:
        return FEATURE_EXTRACTION

    def normalized(self, config) -> NormalizedConfig:
        return NormalizedConfig(hidden_size=config.hidden_size, vocab_size=config.vocab_size,
                                max_positions=config.max_positions)

    def backend_problem(self, backend) -> str | None:
        return "toy encoders are not built into TensorRT engines" if backend.runtime == "tensorrt" else None

    def io(self, model, task: str) -> ModelIO:
        inputs = tuple(TensorSpec(n, "int64", (BATCH, SEQUENCE)) for n in ("input_ids", "attention_mask"))
        return ModelIO(inputs, (TensorSpec("last_hidden_state", "float32", (BATCH, SEQUENCE, HIDDEN)),))

    def wrapper(self, model, io: ModelIO):
        return _Wrapper(model).eval()

    def sample_inputs(self, config, io: ModelIO, case: TextShape, *, seed: int):
        return make_text_inputs(io.input_names, case, vocab_size=config.vocab_size, type_vocab_size=1, seed=seed)

    def case_shape(self, case: TextShape) -> tuple[int, ...]:
        return (case.batch, case.sequence)

    def case_for(self, sizes: dict[str, int], config) -> TextShape:
        if sizes[SEQUENCE] > config.max_positions:
            raise InputError(f"sequence {sizes[SEQUENCE]} exceeds {config.max_positions} positions")
        return TextShape(sizes[BATCH], sizes[SEQUENCE])

    def bench_sizes(self, config) -> list[dict[str, int]]:
        return [{BATCH: 1, SEQUENCE: 16}]

    def fusion_settings(self, model) -> dict:
        return {"num_heads": 0, "hidden_size": HIDDEN, "num_layers": 0}

    def compared_positions(self, feeds) -> dict:
        return {}


@pytest.fixture()
def bag_family(tmp_path):
    """The family registered for one test, and a saved checkpoint of it with a tokenizer."""
    from safetensors.torch import save_file

    spec = register(BagSpec())
    folder = tmp_path / "bag"
    tokenizer = make_tokenizer(folder)
    config = _config({"model_type": MODEL_TYPE, "vocab_size": len(vocabulary()), "hidden_size": HIDDEN,
                      "max_positions": MAX_POSITIONS})
    torch.manual_seed(0)
    model = BagEncoder(config).eval()
    save_file(model.state_dict(), folder / "model.safetensors")
    spec.save_config(model, folder)
    tokenizer.save_pretrained(folder)
    try:
        yield folder, model, tokenizer
    finally:
        unregister(spec)


def test_a_family_defined_in_a_test_runs_the_whole_chain(bag_family, tmp_path):
    folder, model, tokenizer = bag_family
    out = tmp_path / "onnx"
    art = export(str(folder), out)  # validated against eager PyTorch at unseen and padded shapes
    assert art.manifest.family == "toy-bag" and art.manifest.variants["model"].validation.passed
    assert art.manifest.model_config["hidden_size"] == HIDDEN

    art = optimize(out)
    assert {"ort-basic", "ort-extended", "ort-all"} <= set(art.manifest.variants)
    assert "nothing for the toy-bag family" in art.manifest.skipped["optimized"]  # no fuser: said, not faked
    assert art.best_variant() == "ort-all"

    plan = TimingPlan(warmup=1, min_iterations=3, min_seconds=0.0, block=3)
    report = run_benchmark(out, BenchOptions(backends=("torch", "ort", "ort-all"), threads=1, plan=plan))
    assert {m.backend for m in report.measurements} == {"torch", "ort", "ort-all"}
    assert {m.phase for m in report.measurements} == {ENCODE}
    for m in report.measurements:
        if m.backend != "torch":
            assert m.accuracy.max_abs < 1e-5

    texts = ["the good movie", "a dog is running in the world"]
    with create_predictor(art, "ort-all", RuntimeOptions(threads=1)) as predictor:
        vectors = TextModel.from_artifact(art, predictor).predict(texts).embeddings
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(enc["input_ids"], enc["attention_mask"]).numpy()
    mask = enc["attention_mask"].numpy()[..., None]
    expected = (hidden * mask).sum(1) / mask.sum(1)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)

    r = CliRunner().invoke(main, ["predict", str(out), "the good movie", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["backend"] == "ort-measured"  # optimize measured which variant runs which shape

    with pytest.raises(InputError, match="not built into TensorRT"):
        create_predictor(art, "tensorrt")
