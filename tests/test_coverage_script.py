"""scripts/coverage.py on three architectures of one mapping, in this process: BERT (a family spec) validates, GPT-2 (a
decoder family, which has no sequence classification) validates through the generic text family, BART (an
encoder-decoder) is refused in one typed line, and both reports hold them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "coverage.py"


def _script():
    # loaded by path: "coverage" is also the name of the coverage-measuring package
    spec = importlib.util.spec_from_file_location("torchship_coverage_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_coverage_script_on_two_architectures(tmp_path):
    script = _script()
    out = tmp_path / "report"
    assert script.main(["--mappings", "sequence-classification", "--only", "bert,gpt2,bart", "--in-process",
                        "--output", str(out)]) == 0

    data = json.loads((out / "coverage.json").read_text())
    env = data["environment"]
    assert {"transformers", "torch", "onnxruntime", "torchship"} <= set(env["versions"])
    assert env["cpu"] and env["date"] and env["command"].startswith("python scripts/coverage.py")
    rows = {r["model_type"]: r for r in data["rows"]}
    assert set(rows) == {"bert", "gpt2", "bart"}

    bert = rows["bert"]
    assert (bert["built"], bert["ran_eagerly"], bert["exported"], bert["validated"]) == (True, True, True, True)
    assert bert["family"] == "bert" and bert["task"] == "text-classification" and bert["stage"] == "done"
    assert 0 <= bert["max_abs"] <= bert["atol"]
    assert bert["sizes"]["hidden_size"] == 32 and bert["sizes"]["vocab_size"] <= 1000

    # GPT-2's family spec generates text only: its classifier goes to the generic text family
    assert rows["gpt2"]["validated"] and rows["gpt2"]["family"] == "generic-text"

    bart = rows["bart"]  # an encoder-decoder: refused in one typed line
    assert bart["built"] and bart["ran_eagerly"] and not bart["validated"]
    assert bart["typed"] is True and bart["error_type"] == "UnsupportedModelError"
    assert "\n" not in bart["reason"] and "'bart'" in bart["reason"]

    stats = data["mappings"]["sequence-classification"]
    assert stats["config_classes"] > 50  # the whole mapping, beside the three swept
    assert (stats["swept"], stats["built"], stats["ran_eagerly"], stats["exported"], stats["validated"]) == \
        (3, 3, 3, 2, 2)
    assert round(stats["validated_of_eager"], 3) == 0.667 and stats["untyped_errors"] == 0

    md = (out / "SUMMARY.md").read_text()
    for heading in ("# Coverage", "## Not built at tiny size", "## Failures", "## Validated"):
        assert heading in md
    assert "| sequence-classification | text-classification |" in md and "151" in md
    assert env["command"] in md
    assert "| bart | sequence-classification |" in md and "| bert | sequence-classification | bert |" in md
    assert "| gpt2 | sequence-classification | generic-text |" in md


def test_tiny_configs_are_small_and_consistent():
    """The generic shrinking on a few shapes of config: a plain encoder, grouped-query attention with an explicit
    head size, a conv net's per-stage widths, an audio encoder's feature convolutions."""
    import sys

    sys.path.insert(0, str(SCRIPT.parent))
    from coverage_tiny import tiny_config
    from transformers import GemmaConfig, ResNetConfig, Wav2Vec2Config

    gemma = tiny_config(GemmaConfig)
    assert (gemma.hidden_size, gemma.num_hidden_layers, gemma.num_attention_heads) == (32, 2, 4)
    assert gemma.num_key_value_heads == 2 and gemma.head_dim == 8 and gemma.vocab_size == 1000
    assert all(t is None or t < 1000 for t in (gemma.bos_token_id, gemma.eos_token_id, gemma.pad_token_id))
    resnet = tiny_config(ResNetConfig, labels=3)
    assert max(resnet.hidden_sizes) <= 128 and resnet.depths == [1] * len(resnet.depths) and resnet.num_labels == 3
    wav = tiny_config(Wav2Vec2Config)
    assert max(wav.conv_dim) <= 32 and len(wav.conv_dim) == len(wav.conv_kernel) == len(wav.conv_stride)
    assert wav.hidden_size % wav.num_conv_pos_embedding_groups == 0
