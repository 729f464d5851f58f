"""Weight-only int4 / int8 variants of a decoder (ONNX Runtime's MatMulNBits), judged on a fixed decode.

Decoding is memory-bound: every new token reads every weight, so fewer bytes per weight is the lever.
ONNX Runtime's ``MatMulNBitsQuantizer`` stores each weight MatMul's matrix in blocks of ``block_size``
values along K, each block with its own scale (and zero point unless symmetric), as one MatMulNBits node;
activations stay fp32 (``accuracy_level`` 4 lets the kernel quantize them to int8 inside the MatMul, the
fast path on CPUs). The embedding (a Gather; quantized alone at 4 bits only) and the head (the MatMul that makes
the logits) are options. Where the checkpoint ties the head to the embedding, the embedding reads the head's
quantized table at the head's bits (``tied_weights.share_quantized_table``) and the file holds the table once.

The variant is judged the way a decoder is used: a fixed prompt is decoded greedily by the fp32 export for
``steps`` tokens; the quantized model is run along the same tokens, and the next-token logits are compared
at each step (cosine), with the share of steps where its top token is the fp32 one. Each quantized MatMul's
relative weight error is measured too (ONNX Runtime dequantizes it: the node run on an identity matrix),
since at 4 bits a model with random weights gives meaningless end-to-end logits. A variant outside its
budget is not kept; the manifest says why.
"""

from __future__ import annotations

import logging
import time
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from torchship import _progress
from torchship._fs import scratch_dir, transaction
from torchship._ort import ort_runner
from torchship.optimizers.decode_timing import time_decode_step
from torchship.artifact import Artifact, Variant, model_bytes
from torchship.manifest_sections import BuildOptions, FusionRecord, Validation
from torchship.errors import BudgetError, InputError, first_line
from torchship.exporters.spec import DECODE, family_of, require_family, saved_config
from torchship.external_data import normalize, staged_model, uses_external_data
from torchship.optimizers.decoder_fusion import (ATTENTION_FORMS, decoder_fusions, graph_kv_heads,
                                                 merge_sibling_matmuls)
from torchship.optimizers.fusion import op_histogram
from torchship.optimizers.tied_weights import folded_copies, share_quantized_table
from torchship.runtimes.generate import Generator, cache_heads

BITS = (4, 8)
BLOCK_SIZES = (16, 32, 64, 128, 256)
ACCURACY_LEVELS = (0, 1, 2, 3, 4)  # MatMulNBits: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 compute
# Default budgets: at 8 bits the logits follow fp32 closely; at 4 bits only the weight error is judged by
# default (random weights give meaningless 4-bit logits), the cosine reported beside it.
DEFAULT_COSINE = {8: 0.99, 4: None}
DEFAULT_WEIGHT_ERROR = {8: 0.01, 4: 0.15}
# Below this top-1 agreement the variant picks another next token than fp32 more often than not along fp32's own
# decode: it writes different text, whatever its weight error; it is kept (random weights do this) with a warning.
FAR_TOP1 = 0.5


def variant_name(bits: int) -> str:
    return f"wo-int{bits}"


def file_name(bits: int) -> str:
    return f"model_wo_int{bits}.onnx"


@dataclass(frozen=True)
class WeightOnlyOptions:
    bits: int = 4
    # 128 symmetric (GPTQ's and AWQ's usual group): faster than smaller blocks with zero points, within the
    # error ceiling (docs/measurements.md#weight-only-defaults)
    block_size: int = 128
    # 4: int8 compute inside MatMulNBits, several times faster than fp32 compute
    # (docs/measurements.md#weight-only-defaults). None: ONNX Runtime's default.
    accuracy_level: int | None = 4
    symmetric: bool = True
    embedding: bool = False  # also the token embedding (GatherBlockQuantized; 4 bits only)
    head: bool = True  # also the MatMul that makes the logits
    share_tied: bool = True  # a head tied to the embedding: the embedding reads the head's quantized table
    merge_siblings: bool = True  # q/k/v and gate/up MatMuls as one (same numbers, fewer and larger kernels)
    attention: str = "Attention"  # the op each layer's attention becomes (decoder_fusion.ATTENTION_FORMS)
    budget: float | None = None  # floor on the mean next-token logit cosine; None: DEFAULT_COSINE[bits]
    max_weight_error: float | None = None  # ceiling on any MatMul's relative weight error; None: the default
    steps: int = 64  # decode steps the logits are compared over
    prompt_length: int = 16
    threads: int | None = None
    seed: int = 0

    def checked(self) -> "WeightOnlyOptions":
        if self.bits not in BITS:
            raise InputError(f"--bits must be one of {', '.join(map(str, BITS))}, got {self.bits}")
        if self.block_size not in BLOCK_SIZES:
            raise InputError(f"--block-size must be one of {', '.join(map(str, BLOCK_SIZES))}, got {self.block_size}")
        if self.accuracy_level is not None and self.accuracy_level not in ACCURACY_LEVELS:
            raise InputError(f"--accuracy-level must be one of {', '.join(map(str, ACCURACY_LEVELS))}")
        if self.embedding and self.bits != 4:
            raise InputError("ONNX Runtime quantizes the embedding (GatherBlockQuantized) at 4 bits only; "
                             "drop --quantize-embedding or use --bits 4")
        if self.budget is not None and not 0.0 <= self.budget <= 1.0:
            raise InputError(f"the accuracy budget must be in [0, 1], got {self.budget:g}")
        if self.max_weight_error is not None and not self.max_weight_error > 0:
            raise InputError(f"--max-weight-error must be positive, got {self.max_weight_error:g}")
        if self.attention not in ATTENTION_FORMS:
            raise InputError(f"attention must be one of {', '.join(ATTENTION_FORMS)}, got {self.attention!r}")
        if self.steps < 1 or self.prompt_length < 1:
            raise InputError("the judged decode needs at least one step and one prompt token")
        return self

    @property
    def cosine_floor(self) -> float | None:
        return self.budget if self.budget is not None else DEFAULT_COSINE[self.bits]

    @property
    def weight_error_ceiling(self) -> float:
        return self.max_weight_error if self.max_weight_error is not None else DEFAULT_WEIGHT_ERROR[self.bits]


def weight_only(folder: str | Path, options: WeightOnlyOptions = WeightOnlyOptions(), *,
                progress: _progress.Progress = _progress.SILENT) -> Artifact:
    """Write the weight-only variant of the folder's decoder export, judged against the fp32 export."""
    options = options.checked()
    artifact = Artifact.open(folder)
    require_family(artifact, "weight-only quantization is judged on a decoder's decode; use torchship quantize "
                             "--int8 for it", phase=DECODE)
    with transaction(artifact.folder):
        return _weight_only(artifact, options, progress)


def weight_only_step(build, record) -> None:
    """The weight-only backends' builder: ``weight_only`` at the record's bits; it records its variant itself."""
    require_family(build.artifact, "weight-only quantization is judged on a decoder's decode", phase=DECODE)
    _weight_only(build.artifact, WeightOnlyOptions(bits=int(record.precision.removeprefix("int"))).checked(),
                 build.progress)


def _weight_only(artifact: Artifact, options: WeightOnlyOptions, progress: _progress.Progress) -> Artifact:
    name, final = variant_name(options.bits), artifact.folder / file_name(options.bits)
    src = artifact.path_of("model")
    with scratch_dir(artifact.folder, "weight-only") as scratch:
        progress.step(f"quantizing the weights to {options.bits} bits, blocks of {options.block_size}")
        start = time.perf_counter()
        prepared, built = scratch / "prepared.onnx", scratch / "quantized.onnx"
        head = _head_matmuls(src)
        exclude = () if options.head else head
        layout = _prepare(src, prepared, exclude=exclude, merge=options.merge_siblings, attention=options.attention,
                          heads=artifact.manifest.num_heads)
        layout["shared"] = _build(prepared, built, options, exclude=exclude)
        seconds = time.perf_counter() - start
        progress.step("measuring each quantized MatMul's weight error")
        errors = matmul_errors(prepared, built)
        progress.step(f"decoding {options.steps} tokens with the fp32 export and the quantized model")
        decode = _compare_decodes(artifact, src, built, options)
        judged = _judgement(errors, decode, options, head)
        judged["fp32_weight_ops"] = left = _weight_ops_left(built, exclude)
        judged["layout"] = layout
        if left:
            progress.step(f"WARNING: {len(left)} weight op(s) stay fp32 ({', '.join(sorted(set(left.values())))}): "
                          "ONNX Runtime's quantizer makes MatMulNBits from MatMul only")
        progress.step(judged["summary"])
        if judged["warning"]:
            progress.step(f"WARNING: {judged['warning']}")
        if not judged["passed"]:
            why = f"{name} missed its budget: {judged['summary']}"
            artifact.save(artifact.manifest.with_skipped(name, why))
            more_bits = ", --bits 8" if options.bits == 4 else ""
            raise BudgetError(f"{why}. The numbers are in {artifact.folder}/torchship.json; try a smaller "
                              f"--block-size{more_bits}, keep the head in fp32 (--no-head), or loosen --budget / "
                              "--max-weight-error")
        progress.step("timing one decode step against the fp32 decoder files (what --backend auto reads)")
        timing = time_decode_step(artifact, built, past=options.prompt_length + options.steps - 1,
                                  threads=options.threads)  # as long as the judged decode ran
        progress.step(f"{name}: {timing['speedup_vs_fp32']:.2f}x {timing['fp32']} at the {timing['shape']}")
        with staged_model(final) as tmp:
            normalize(built, tmp, "auto")
    variant = Variant(name=name, file=final.name, stage="weight-only", options=BuildOptions.from_json(
                      {"precision": f"int{options.bits}", "bits": options.bits,
                               "block_size": options.block_size, "accuracy_level": options.accuracy_level,
                               "symmetric": options.symmetric, "embedding": options.embedding or bool(layout["shared"]), "head": options.head,
                               "merge_siblings": options.merge_siblings, "attention": options.attention,
                               "shared_table": bool(layout["shared"]), "timing": timing,
                               "quantizer": "onnxruntime MatMulNBitsQuantizer (round to nearest)"}),
                      size_bytes=model_bytes(final), seconds=round(seconds, 3), validation=Validation.from_json(judged),
                      fusion=FusionRecord(op_histogram(final)), notes=(judged["warning"],) if judged["warning"] else ())
    artifact.save(artifact.manifest.with_variant(variant))
    return artifact


def _prepare(src: Path, dst: Path, *, exclude: tuple[str, ...], merge: bool, attention: str = "Attention",
             heads: int | None = None) -> dict:
    """The fp32 graph the quantizer takes, written to ``dst``: a tied head untied, sibling MatMuls merged,
    attention and residual norms fused as ``optimize`` fuses them (``heads``: the query heads, for layers
    without rotary)."""
    import onnx

    model = onnx.load(str(src))
    kv = graph_kv_heads(model)
    layout = {"untied": sorted(_untie_transposed_weights(model, exclude).values()),
              "merged": merge_sibling_matmuls(model, exclude) if merge else [],
              "fused": decoder_fusions(model, attention=attention, heads=(heads, kv) if heads and kv else None,
                                       merge=False)}
    onnx.save(model, str(dst), save_as_external_data=uses_external_data(src), all_tensors_to_one_file=True,
              location=dst.name + ".data")
    return layout


def _build(src: Path, dst: Path, options: WeightOnlyOptions, *, exclude: tuple[str, ...]) -> list[dict]:
    """Quantize ``src`` (a prepared fp32 graph) into ``dst``. With ``share_tied``, an embedding whose table a head
    reads transposed (its own copy, :func:`_prepare`) reads the head's quantized table instead; returns what was
    shared."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    ops = ("MatMul", "Gather") if options.embedding else ("MatMul",)
    model = onnx.load(str(src))
    # {head weight: embedding table}; those Gathers wait for the head's table instead of a quantized copy of their own
    ties = {n.input[1]: t for n, t in folded_copies(model.graph) if n.name not in exclude} if options.share_tied else {}
    tables = set(ties.values())
    exclude = (*exclude, *(n.name for n in model.graph.node if n.op_type == "Gather" and n.input[0] in tables))
    shared: list[dict] = []
    logger = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")  # one INFO line per node
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        quantizer = MatMulNBitsQuantizer(model, bits=options.bits, block_size=options.block_size,
                                         is_symmetric=options.symmetric, accuracy_level=options.accuracy_level,
                                         nodes_to_exclude=list(exclude), op_types_to_quantize=ops)
        with np.errstate(divide="ignore", invalid="ignore"):  # an all-zero block (the pad row) has scale 0,
            quantizer.process()  # which the quantizer then handles itself
        if ties:
            shared = share_quantized_table(quantizer.model.model, ties)
        quantizer.model.save_model_to_file(str(dst), use_external_data_format=uses_external_data(src))
    except OSError:
        raise
    except Exception as exc:  # the quantizer raises assorted errors on graphs it does not expect
        raise InputError(f"ONNX Runtime's MatMulNBits quantizer failed on {src.name}: {first_line(exc)}") from None
    finally:
        logger.setLevel(level)
    if not any(n.op_type in ("MatMulNBits", "GatherBlockQuantized") for n in onnx.load(str(dst)).graph.node):
        raise InputError(f"no MatMul of {src.name} has a constant 2-D weight, so nothing was quantized")
    return shared


def _untie_transposed_weights(model, exclude: tuple[str, ...]) -> dict[str, str]:
    """A MatMul whose weight is ``Transpose(initializer)`` (a head tied to the embedding: the export keeps one
    matrix) gets its own transposed copy, which the quantizer can take; the embedding keeps the original."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    untied = {}
    for node in graph.node:
        if node.op_type != "MatMul" or node.name in exclude or len(node.input) < 2:
            continue
        t = producer.get(node.input[1])
        perm = [list(a.ints) for a in t.attribute if a.name == "perm"] if t is not None else []
        if t is None or t.op_type != "Transpose" or t.input[0] not in inits or perm not in ([], [[1, 0]]):
            continue
        source = inits[t.input[0]]
        if len(source.dims) != 2:
            continue
        name = f"{source.name}.transposed"
        if name not in untied:
            graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(source).T.copy(), name))
            untied[name] = source.name
        node.input[1] = name
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    dead = [n for n in graph.node if n.op_type == "Transpose" and not any(o in used for o in n.output)]
    for n in dead:
        graph.node.remove(n)
    return untied


def _head_matmuls(path: Path) -> tuple[str, ...]:
    """The MatMul(s) whose output reaches the ``logits`` output through shape-only ops (the head)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    producer = {o: n for n in graph.node for o in n.output}
    heads, name = [], "logits"
    while name in producer:
        node = producer[name]
        if node.op_type == "MatMul":
            heads.append(node.name)
            break
        if node.op_type not in ("Reshape", "Identity", "Cast", "Squeeze", "Unsqueeze", "Add"):
            break
        name = node.input[0]
    return tuple(heads)


def _weight_ops_left(path: Path, excluded: tuple[str, ...]) -> dict[str, str]:
    """MatMul / Gemm nodes with a constant weight that were not quantized (GPT-2's Conv1D layers export as
    Gemm), beside those left out on purpose."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    return {n.name: n.op_type for n in graph.node if n.op_type in ("MatMul", "Gemm") and n.name not in excluded
            and len(n.input) > 1 and n.input[1] in weights}


def matmul_errors(src: Path, quantized: Path) -> list[dict]:
    """Per MatMulNBits node: the relative (Frobenius) error of the weight ONNX Runtime computes with, against
    the fp32 weight of ``src`` it replaced. The weight is recovered by running the node alone on an identity
    matrix."""
    import onnx
    from onnx import helper, numpy_helper

    original = {t.name: t for t in onnx.load(str(src)).graph.initializer}
    model = onnx.load(str(quantized))
    inits = {t.name: t for t in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        k, n = int(attrs["K"]), int(attrs["N"])
        weight_name = node.input[1].rsplit("_Q", 1)[0]
        if weight_name not in original:
            continue
        weight = numpy_helper.to_array(original[weight_name]).reshape(k, n).astype(np.float32)
        single = helper.make_node("MatMulNBits", ["x", *node.input[1:]], ["y"], domain="com.microsoft",
                                  **{a: v for a, v in attrs.items() if a != "accuracy_level"})
        graph = helper.make_graph([single], "one", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [k, k])],
                                  [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [k, n])],
                                  [inits[i] for i in node.input[1:] if i in inits])
        one = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
        dequantized = _run_model(one, {"x": np.eye(k, dtype=np.float32)})
        error = float(np.linalg.norm(dequantized - weight) / max(np.linalg.norm(weight), 1e-30))
        out.append({"name": node.name.rsplit("_Q", 1)[0] if node.name else weight_name, "shape": [k, n],
                    "relative_error": round(error, 6)})
    return out


def _run_model(model, feeds: dict) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _compare_decodes(artifact: Artifact, src: Path, quantized: Path, options: WeightOnlyOptions) -> dict:
    """fp32 greedy decode of a fixed prompt, the quantized model along the same tokens and on its own."""
    m = artifact.manifest
    heads, head_dim = cache_heads(m.io(), m.num_layers)
    shape = family_of(m).normalized(saved_config(artifact))
    prompt = np.random.default_rng(options.seed).integers(0, shape.vocab_size, size=options.prompt_length,
                                                          dtype=np.int64)

    def generator(path: Path) -> Generator:
        predictor = types.SimpleNamespace(infer=ort_runner(path, threads=options.threads))
        return Generator(predictor, num_layers=m.num_layers, num_heads=heads, head_dim=head_dim, eos_token_id=None,
                         pad_token_id=0, max_positions=shape.max_positions or None)

    reference, quant = generator(src), generator(quantized)
    tokens, ref_logits = reference.decode_logits(prompt, steps=options.steps)
    _, q_logits = quant.decode_logits(prompt, steps=options.steps, forced=tokens)
    own, _ = quant.decode_logits(prompt, steps=options.steps)
    cos = np.sum(ref_logits * q_logits, axis=1) / np.maximum(
        np.linalg.norm(ref_logits, axis=1) * np.linalg.norm(q_logits, axis=1), 1e-30)
    same = own == tokens
    return {"steps": options.steps, "prompt": f"{options.prompt_length} random token ids, seed {options.seed}",
            "logit_cosine_mean": round(float(cos.mean()), 6), "logit_cosine_min": round(float(cos.min()), 6),
            "top1_agreement": round(float((q_logits.argmax(axis=1) == tokens).mean()), 4),
            "greedy_same_prefix": int(len(same) if same.all() else same.argmin())}


def _judgement(errors: list[dict], decode: dict, options: WeightOnlyOptions, head: tuple[str, ...]) -> dict:
    worst = max(errors, key=lambda e: e["relative_error"], default=None)
    floor, ceiling = options.cosine_floor, options.weight_error_ceiling
    weight_ok = worst is None or worst["relative_error"] <= ceiling
    cosine_ok = floor is None or decode["logit_cosine_mean"] >= floor
    far = decode["top1_agreement"] < FAR_TOP1
    warning = (f"far from fp32: its next token is fp32's at {decode['top1_agreement']:.1%} of {decode['steps']} "
               f"steps (under {FAR_TOP1:.0%}), so it writes different text; compare its generations before using it"
               + (", or try --bits 8" if options.bits == 4 else "")) if far else None
    summary = (f"next-token logit cosine mean {decode['logit_cosine_mean']:.6f} (min {decode['logit_cosine_min']:.6f}"
               f"{f', budget {floor}' if floor is not None else ', no budget'}) over {decode['steps']} steps, top-1 "
               f"agreement {decode['top1_agreement']:.2%}, same greedy tokens for {decode['greedy_same_prefix']}; "
               f"worst MatMul weight error {worst['relative_error'] if worst else 0:.4f} (ceiling {ceiling:g})")
    return {"passed": bool(weight_ok and cosine_ok), "metric": "next-token logit cosine", "budget": floor,
            "mean": decode["logit_cosine_mean"], "min": decode["logit_cosine_min"], **decode,
            "max_weight_error": worst["relative_error"] if worst else None,
            "mean_weight_error": round(float(np.mean([e["relative_error"] for e in errors])), 6) if errors else None,
            "weight_error_ceiling": ceiling, "quantized_matmuls": len(errors), "head": list(head),
            "matmuls": errors, "against": "fp32 export", "summary": summary, "warning": warning}
