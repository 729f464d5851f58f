"""Auto acceleration: every variant that fits the device, validated, benchmarked, the best one named.

``run_auto`` takes a Hugging Face checkpoint (any family torchship exports) or an ONNX file and a
config in the spirit of the original Auto Acceleration ``config.yml``: a shape config (device, and
min/use/max per input) plus an accuracy budget and the precisions to try. It drives the existing
stages (export or import, optimize, quantize, the runtimes, bench) and adds no second copy of
their logic:

1. export (validated against eager PyTorch) or import the ONNX file (validated against itself);
2. every backend the table (:mod:`torchship.backends`) marks as swept: on a CPU config ORT at each
   graph level, ORT with transformer fusion, the fused model's other attention kernels and its FastGelu
   form (an encoder's candidates of optimize's measured dispatch, made without its timing), int8
   (``quantize``), OpenVINO fp32 and fp16 weights; on a GPU config (device cuda) ORT CUDA fp32/fp16 and
   TensorRT fp32/fp16/int8. What does not fit the device or precisions is listed as skipped, with why;
3. accuracy of every variant against the fp32 original: full-tensor max abs, mean abs and cosine on
   realistic random inputs at the use shape, and the budget metric (sentence cosine for embedding
   models, label agreement for classifiers, output cosine otherwise; see optimizers/accuracy.py);
4. one interleaved benchmark of all of them (eager PyTorch too, when there is a checkpoint) at
   the use shape: latency percentiles, throughput counting the batch, file size, build time;
5. the fastest variant within the budget is chosen (docs/reference.md#the-winner-rule). The summary is
   written as Markdown, CSV, JSON, an Excel sheet and a chart of latency against error.

The modules: :mod:`~torchship.auto.config` (the config), :mod:`~torchship.auto.sweep` (steps 1-4),
:mod:`~torchship.auto.choice` (rows, statuses, step 5) and :mod:`~torchship.auto.summary` (the files).
"""

from torchship.auto.choice import AutoReport, Row, Status, choose
from torchship.auto.config import AUTO_KEYS, PRECISIONS, AutoConfig, check_device, load_auto_config, parse_auto_config
from torchship.auto.summary import COLUMNS, MODEL_DIR, SUMMARY, markdown, read_summary, write_summary
from torchship.auto.sweep import VARIANTS, run_auto

__all__ = ["AUTO_KEYS", "COLUMNS", "MODEL_DIR", "PRECISIONS", "SUMMARY", "VARIANTS", "AutoConfig", "AutoReport", "Row",
           "Status", "check_device", "choose", "load_auto_config", "markdown", "parse_auto_config", "read_summary",
           "run_auto", "write_summary"]
