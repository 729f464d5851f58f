"""The shape config: parsing, contradictions with itself, and contradictions with the model."""

import types

import pytest

from torchship.errors import InputError
from torchship.exporters.spec import spec_for
from torchship.shapes import load_shape_config, parse_device, parse_shape_config, resolve

INPAINT = {"in_channels": 9, "out_channels": 4, "cross_attention_dim": 1024, "sample_size": 64,
           "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]}
GOOD = """
device: cpu
inputs:
  sample:                {min: [1, 9, 32, 32], use: [1, 9, 64, 64], max: [2, 9, 96, 96]}
  timestep:              {min: [1], use: [1], max: [2]}
  encoder_hidden_states: {min: [1, 77, 1024], use: [1, 77, 1024], max: [2, 77, 1024]}
outputs:
  out_sample: {use: [1, 4, 64, 64]}
"""


def unet_io(**overrides):
    spec = spec_for("UNet2DConditionModel")
    return spec, spec.io(types.SimpleNamespace(config={**INPAINT, **overrides}), "denoising")


def write(tmp_path, text, name="shapes.yml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_config_resolves_every_axis(tmp_path):
    spec, io = unet_io()
    resolved = resolve(load_shape_config(write(tmp_path, GOOD)), io)
    assert resolved.axes == {"batch": (1, 1, 2), "height": (32, 64, 96), "width": (32, 64, 96),
                             "steps": (1, 1, 2), "sequence": (77, 77, 77)}
    assert resolved.inputs["sample"] == {"min": [1, 9, 32, 32], "use": [1, 9, 64, 64], "max": [2, 9, 96, 96]}
    case = spec.case_for(resolved.sizes("use"), INPAINT)
    assert case.label() == "batch 1 x 64x64 latents x 77 tokens"
    assert type(resolved).from_json(resolved.to_json()) == resolved


def test_aliases_list_form_defaults_and_json(tmp_path):
    text = """{"device": 0, "inputs": [
        {"name": "sample", "min_shape": [1, 9, 32, 32], "opt_shape": [1, 9, 64, 64], "max_shape": [1, 9, 64, 64]},
        {"name": "timestep", "use": [1]},
        {"name": "encoder_hidden_states", "use": [1, 77, 1024]}]}"""
    config = load_shape_config(write(tmp_path, text, "shapes.json"))
    assert config.device == "cuda:0"
    assert config.inputs["timestep"].min == config.inputs["timestep"].max == (1,)  # min and max default to use
    resolved = resolve(config, unet_io()[1])
    assert resolved.axes["height"] == (32, 64, 64)


@pytest.mark.parametrize("value,expected", [("cpu", "cpu"), ("CUDA", "cuda:0"), ("gpu", "cuda:0"), (1, "cuda:1"),
                                            ("cuda:2", "cuda:2"), ("3", "cuda:3")])
def test_devices(value, expected):
    assert parse_device(value) == expected


@pytest.mark.parametrize("text,message", [
    ("inputs: {x: {min: [4], use: [2], max: [1]}}", "min [4] > max [1] at axis 0"),
    ("inputs: {x: {min: [1], use: [5], max: [4]}}", "use [5] outside min [1]..max [4]"),
    ("inputs: {x: {min: [1, 2], use: [1], max: [1]}}", "different ranks"),
    ("inputs: {x: {use: [1, two]}}", "sizes are whole numbers"),
    ("inputs: {x: {use: [-1]}}", "cannot be negative"),
    ("inputs: {x: {min: [1], max: [2]}}", "needs a 'use' shape"),
    ("inputs: {x: {use: [1], typo: [2]}}", "unknown key 'typo'"),
    ("device: tpu\ninputs: {x: {use: [1]}}", "unknown device 'tpu'"),
    ("devices: cpu\ninputs: {x: {use: [1]}}", "unknown key 'devices'"),
    ("device: cpu", "'inputs' is missing or empty"),
    ("inputs: [1, 2]", "needs a 'name'"),
    ("inputs: {x: [1, 2]", "not valid YAML"),
    ("- just a list", "must be a mapping"),
])
def test_config_that_contradicts_itself(tmp_path, text, message):
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        load_shape_config(write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_shape_config(tmp_path / "nope.yml")


@pytest.mark.parametrize("edit,message", [
    (("sample", {"use": [1, 4, 64, 64]}), "input 'sample' axis 1 is fixed at 9 in the model"),
    (("encoder_hidden_states", {"use": [1, 77, 768], "max": [2, 77, 768]}), "axis 2 is fixed at 1024"),
    (("sample", {"use": [1, 9, 64]}), "has 4 axes in the model"),
    (("mask", {"use": [1, 1, 64, 64]}), "names input 'mask', which the model does not have"),
    (("encoder_hidden_states", {"min": [1, 77, 1024], "use": [2, 77, 1024], "max": [2, 77, 1024]}),
     "axis 'batch' is 1..2 (use 1) in input 'sample' but 1..2 (use 2)"),
    (("timestep", None), "gives no shape for input 'timestep'"),
])
def test_config_that_contradicts_the_model(edit, message):
    data = {"inputs": {"sample": {"min": [1, 9, 32, 32], "use": [1, 9, 64, 64], "max": [2, 9, 64, 64]},
                       "timestep": {"use": [1]}, "encoder_hidden_states": {"use": [1, 77, 1024], "max": [2, 77, 1024]}}}
    name, shapes = edit
    if shapes is None:
        del data["inputs"][name]
    else:
        data["inputs"][name] = shapes
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        resolve(parse_shape_config(data), unet_io()[1])


def test_output_use_shape_must_fit():
    data = {"inputs": {"sample": {"use": [1, 9, 64, 64]}, "timestep": {"use": [1]},
                       "encoder_hidden_states": {"use": [1, 77, 1024]}},
            "outputs": {"out_sample": {"use": [1, 9, 64, 64]}}}
    with pytest.raises(InputError, match="output 'out_sample' use shape .* axis 1 \\(4\\) would be 4"):
        resolve(parse_shape_config(data), unet_io()[1])
    data["outputs"] = {"noise": {"use": [1]}}
    with pytest.raises(InputError, match="names output 'noise'"):
        resolve(parse_shape_config(data), unet_io()[1])


def test_model_limits_checked_when_shapes_become_cases():
    spec, io = unet_io()
    data = {"inputs": {"sample": {"use": [1, 9, 60, 64]}, "timestep": {"use": [1]},
                       "encoder_hidden_states": {"use": [1, 77, 1024]}}}
    resolved = resolve(parse_shape_config(data), io)
    with pytest.raises(InputError, match="latent height 60 is not a multiple of 8"):
        spec.case_for(resolved.sizes("use"), INPAINT)
    data["inputs"] = {"sample": {"use": [3, 9, 64, 64]}, "timestep": {"use": [2]},
                      "encoder_hidden_states": {"use": [3, 77, 1024]}}
    with pytest.raises(InputError, match="timestep has 2 values for batch 3"):
        spec.case_for(resolve(parse_shape_config(data), io).sizes("use"), INPAINT)
    bert = spec_for("bert")
    with pytest.raises(InputError, match="exceeds the model's limit of 512 positions"):
        bert.case_for({"batch": 1, "sequence": 600}, types.SimpleNamespace(max_position_embeddings=512))


@pytest.mark.parametrize("key", ["addition_embed_type", "class_embed_type", "time_cond_proj_dim"])
def test_unets_with_extra_conditioning_are_refused_clearly(key):
    from torchship.errors import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match=f"sets {key}=.*text-conditioned UNets"):
        unet_io(**{key: "text_time" if key != "time_cond_proj_dim" else 256})


def test_decoder_mask_length_must_be_past_plus_new():
    gpt2 = spec_for("gpt2")
    config = types.SimpleNamespace(max_position_embeddings=64)
    case = gpt2.case_for({"batch": 2, "sequence": 1, "past_sequence": 8, "total_sequence": 9}, config)
    assert (case.batch, case.sequence, case.past) == (2, 1, 8)
    with pytest.raises(InputError, match="attention_mask covers 10 positions, but past \\(8\\) plus new tokens"):
        gpt2.case_for({"batch": 2, "sequence": 1, "past_sequence": 8, "total_sequence": 10}, config)
    with pytest.raises(InputError, match="exceeds the model's limit of 64"):
        gpt2.case_for({"batch": 1, "sequence": 60, "past_sequence": 8}, config)
