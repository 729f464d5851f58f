"""Click options defined once and shared by the commands (the library never imports click)."""

from __future__ import annotations

import click

from torchship._ort import GRAPH_LEVELS, SPIN_MODES
from torchship.exporters.export import ATTN_IMPLEMENTATIONS, EXPORTERS, MAX_OPSET, MIN_OPSET
from torchship.exporters.spec import TASKS
from torchship.external_data import MODES as EXTERNAL_DATA_MODES
from torchship.processing.entities import STRATEGIES
from torchship.backends import choices_help

def model_option(example: str = "bert-base-cased"):
    return click.option("--model", "-m", "model", required=True, metavar="ID_OR_DIR",
                        help=f"Hugging Face hub id (e.g. {example}) or a local model folder.")


ENCODER_TASK_DEFAULT = ("its head (text-classification for a sequence classifier, question-answering for a QA "
                        "head, ...; else feature-extraction)")


def task_option(tasks=TASKS, default: str | None = None):
    default = default or (f"{tasks[0]}, the only one" if len(tasks) == 1 else
                          f"from the checkpoint: for encoders {ENCODER_TASK_DEFAULT}; text-generation for "
                          "decoders; denoising for UNets")
    return click.option("--task", type=click.Choice(tasks), default=None, help=f"What to export; default: {default}.")


def exporter_option(default: str = "by measurement: torchscript for encoders (fuses fully in ONNX Runtime), dynamo "
                                   "for decoders (ONNX Attention ops with the KV cache) and UNets"):
    return click.option("--exporter", type=click.Choice(EXPORTERS), default=None,
                        help=f"torch.onnx export path; default, {default}.")


model = model_option()
aggregation = click.option("--aggregation", type=click.Choice(STRATEGIES), default="simple", show_default=True,
                           help="Token classifiers: how tokens group into entities, as transformers' "
                                "token-classification pipeline's aggregation_strategy.")
# No file_okay=False: an output that is a file is refused by torchship (one line, exit 2), as one under a file is.
output = click.option("--output", "-o", "output", required=True, type=click.Path(),
                      help="Folder to write; replaced atomically if torchship wrote it before.")
task = task_option()
exporter = exporter_option()
tokenizer = click.option("--tokenizer", "tokenizer", type=click.Path(), default=None, metavar="FOLDER",
                         help="Text models: attach the tokenizer that tokenizer.save_pretrained() wrote into FOLDER "
                              "(for a checkpoint without one, or in place of its own); refused when its ids exceed "
                              "the model's vocabulary.")
opset = click.option("--opset", type=click.IntRange(MIN_OPSET, MAX_OPSET), default=None,
                     help="ONNX opset; default 17 for torchscript, 23 for dynamo.")
attn = click.option("--attn-implementation", type=click.Choice(ATTN_IMPLEMENTATIONS), default=None,
                    help="Attention code traced into the graph; default eager for torchscript, sdpa for dynamo.")
atol = click.option("--atol", type=float, default=None,
                    help="Max abs difference allowed against eager PyTorch (default: the family's: 1e-4 for text models, 1e-3 for UNets).")
allow_pickle = click.option("--allow-pickle", is_flag=True,
                            help="Allow loading pickle weights (pytorch_model.bin). Only for files you trust.")
trust_remote_code = click.option("--trust-remote-code", is_flag=True,
                                 help="Run custom model code from the checkpoint. Off by default.")
no_cache = click.option("--no-cache", is_flag=True,
                        help="Export a causal LM whose KV cache is not transformers' per-layer key/value cache (sliding "
                             "window, hybrid, state-space) without a cache: logits only, no generate.")
revision = click.option("--revision", default=None, help="Hub revision (branch, tag or commit).")
levels = click.option("--levels", default=",".join(GRAPH_LEVELS), show_default=True,
                      help="ORT graph optimization levels to save as offline-optimized files.")
no_fusion = click.option("--no-fusion", is_flag=True, help="Skip the transformer fusion optimizer.")
threads = click.option("--threads", type=click.IntRange(min=1), default=None,
                       help="Threads for every backend (torch and ORT alike); default: all CPUs.")
backends = click.option("--backends", default=None,
                        help=f"Comma-separated: {choices_help()}. Default: eager PyTorch, every variant in the folder "
                             "(decoders too), and ort-measured where optimize measured a dispatch table.")
batch_sizes = click.option("--batch-sizes", default=None,
                           help="Comma-separated batch sizes; default: the shape config's use shape, else 1,8 "
                                "for encoders and 1 for UNets and decoders.")
seq_lens = click.option("--seq-lens", default=None,
                        help="Comma-separated sequence (text token) lengths; default: the shape config's use "
                             "shape, else 16,128 for encoders and 77 for UNets.")
shape_config = click.option("--config", "shape_config", type=click.Path(dir_okay=False), default=None,
                            help="Shape config (YAML): device, and per input min/use/max shapes. Export validates "
                                 "at min, use and max and keeps it in the folder; bench runs at use.")
external_data = click.option("--external-data", type=click.Choice(EXTERNAL_DATA_MODES), default="auto",
                             show_default=True,
                             help="Keep weights in model.onnx.data beside the graph: auto above 1 GiB of weights "
                                  "(ONNX files cannot exceed 2 GB), always, or never.")
min_seconds = click.option("--min-seconds", type=click.FloatRange(min=0.0), default=2.0, show_default=True,
                           help="Minimum measured time per backend and shape.")
warmup = click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True,
                      help="Untimed runs per backend and shape before timing.")
min_iterations = click.option("--min-iterations", type=click.IntRange(min=1), default=30, show_default=True,
                              help="Timed runs per backend and shape, at least (a UNet step takes seconds on a "
                                   "CPU: lower this for a quick look).")
spin = click.option("--ort-spin", type=click.Choice(SPIN_MODES), default="run", show_default=True,
                    help="ORT worker threads: spin during each run and stop when it returns (run), keep spinning "
                         "after it too, holding a core (always, ORT's own default), or sleep between operators "
                         "(off, slower).")
reference_model = click.option("--reference-model", default=None, metavar="ID_OR_DIR",
                               help="Checkpoint for the PyTorch backends; default: the export's source.")
report_dir = click.option("--report", "report_dir", type=click.Path(file_okay=False), default=None,
                          help="Folder for the report; default: DIR/bench.")
prompt_length = click.option("--prompt-length", "--prompt-lengths", "prompt_length", default=None,
                             help="Decoders: comma-separated prompt lengths to time the prefill at (default: the "
                                  "shape config's use sequence, else 32,128 within the model's positions); alone, "
                                  "also the past lengths of the decode steps.")
past_length = click.option("--past-length", "--past-lengths", "past_length", default=None,
                           help="Decoders: comma-separated cached lengths to time one decode step after (default: "
                                "--prompt-length's, else 32,128, at most the model's positions minus one).")
genai = click.option("--genai/--no-genai", default=True, show_default=True,
                     help="Decoders: add the same checkpoint built by onnxruntime-genai's model builder (when "
                          "installed: torchship[genai]) at each benched precision, built once into DIR/genai/; its "
                          "graph is timed per step in a plain ONNX Runtime session, not genai's generation loop.")
peak_memory = click.option("--peak-memory/--no-peak-memory", default=True, show_default=True,
                           help="Decoders: measure each row's peak memory alone in a fresh process (resident memory "
                                "its model adds at the largest prefill and decode step; Linux).")
budget = click.option("--budget", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.99, show_default=True,
                      help="Accuracy floor against the fp32 model: mean sentence-embedding cosine (embedding "
                           "models), label agreement (classifiers) or output cosine (other models).")
exact = click.option("--exact", is_flag=True,
                     help="Exact variants only: leave out the fused model with tanh-approximate GELU (FastGelu, as "
                          "Optimum's O3), which the measured dispatch otherwise times and may choose where it is "
                          "faster; it is judged by output cosine >= 0.9999 against the export, not eager's --atol.")
eval_texts = click.option("--eval-texts", type=click.Path(dir_okay=False), default=None,
                          help="Texts (one per line) the accuracy is measured on; default: torchship's 60 varied "
                               "sentences (torchship/data/sentences.txt).")
