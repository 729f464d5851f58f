import os
import shutil
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# optimize's per-shape timing of tiny models: which variant wins does not matter here, only that it is measured
os.environ.setdefault("TORCHSHIP_DISPATCH_SECONDS", "0.2")
sys.path.insert(0, str(Path(__file__).parent))

from tiny import save_model_dir  # noqa: E402


def pytest_configure(config):
    _one_cpu_per_worker(config)
    """Each run gets its own temporary root, removed when the run ends: two runs at once on one machine would
    otherwise share /tmp/pytest-of-USER, and pytest prunes the other run's folders from under it."""
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        import tempfile

        config.option.basetemp = tempfile.mkdtemp(prefix="torchship-tests-")
        config._torchship_basetemp = config.option.basetemp


# The files that take longest start first (longest first, from `--durations=0` of a suite run), so that two workers
# (`make test`: pytest -n 2 --dist loadfile --no-loadscope-reorder, which keeps this order instead of xdist's
# own by number of tests) finish together instead of one running a long file alone at the end.
LONG_FILES = ("test_help_examples.py", "test_generic_encoders.py", "test_tasks.py", "test_llama_decoders.py",
              "test_auto.py", "test_decoder_bench.py", "test_serving.py", "test_serving_images.py", "test_unet.py",
              "test_export.py", "test_hints.py", "test_quantize.py", "test_dispatch.py", "test_generic_decoders.py",
              "test_image_text.py", "test_image_models.py", "test_image_text_models.py", "test_cli.py",
              "test_images.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))  # stable: the rest keep their order


def _one_cpu_per_worker(config):
    """Under `pytest -n N` each worker runs on one CPU of its own: torchship's sessions then default to one thread
    (usable_cpus reads the affinity), so two workers on two cores do not each start two spinning threads and
    slow the other down. Tests that ask for threads still get them, on their worker's CPU."""
    worker = getattr(config, "workerinput", {}).get("workerid", "")
    if worker.startswith("gw") and hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        count = int(config.workerinput.get("workercount", 1))
        if len(cpus) >= count > 1:
            os.sched_setaffinity(0, {cpus[int(worker[2:]) % len(cpus)]})


def pytest_unconfigure(config):
    import shutil

    root = getattr(config, "_torchship_basetemp", None)
    if root:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    """Factory: a saved tiny model folder per (model_type, task), built once per session."""
    cache = {}

    def get(model_type: str, task: str = "feature-extraction") -> Path:
        key = (model_type, task)
        if key not in cache:
            cache[key] = save_model_dir(tmp_path_factory.mktemp(f"{model_type}-{task}"), model_type, task)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def exported(model_dirs, tmp_path_factory):
    """Factory: an exported (and, on request, optimized) folder per (model_type, task), built once."""
    from torchship.exporters.export import ExportOptions, export
    from torchship.optimizers import optimize

    cache = {}

    def get(model_type: str = "bert", task: str = "feature-extraction", optimized: bool = False) -> Path:
        key = (model_type, task)
        if key not in cache:
            out = tmp_path_factory.mktemp(f"export-{model_type}-{task}") / "onnx"
            export(str(model_dirs(model_type, task)), out, ExportOptions(task=task))  # fill-mask is never a default
            cache[key] = [out, False]
        if optimized and not cache[key][1]:
            optimize(cache[key][0])
            cache[key][1] = True
        return cache[key][0]

    return get


@pytest.fixture(scope="session")
def shared_build(tmp_path_factory, worker_id):
    """Factory: ``build(folder)`` run once per test run for ``key``, its folder shared by the xdist workers (a file
    lock: the first to ask builds, the others wait and read). Read it as it is; copy it before changing it."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = (base if worker_id == "master" else base.parent) / "shared"
    root.mkdir(exist_ok=True)

    def get(key: str, build) -> Path:
        folder = root / key
        with FileLock(str(folder) + ".lock"):
            if not (folder / ".built").is_file():
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir()
                build(folder)
                (folder / ".built").touch()
        return folder

    return get


@pytest.fixture(scope="session")
def towers(shared_build):
    """Factory: a tiny CLIP or SigLIP checkpoint (``ckpt/``) and its export (``onnx/``), made once per test run."""
    from image_models import make_image_text
    from torchship.exporters.export import ExportOptions, export

    def build(folder: Path) -> None:
        make_image_text(folder.name, folder / "ckpt")
        export(str(folder / "ckpt"), folder / "onnx", ExportOptions())

    return lambda kind: shared_build(kind, build)


@pytest.fixture(scope="session")
def minilm_dir():
    from torchship.demo import packaged_minilm

    return packaged_minilm()


@pytest.fixture(scope="session")
def minilm_export(minilm_dir, tmp_path_factory):
    """The packaged MiniLM exported and transformer-fused once per session (copy it before changing it)."""
    from torchship.exporters.export import export
    from torchship.optimizers import OptimizeOptions, optimize

    out = tmp_path_factory.mktemp("minilm") / "onnx"
    export(str(minilm_dir), out)
    optimize(out, OptimizeOptions(levels=(), candidates="preset"))  # no per-shape timing: it is MiniLM-sized
    return out


@pytest.fixture(scope="session")
def decoder_dir(tmp_path_factory):
    from tiny import save_decoder_dir

    return save_decoder_dir(tmp_path_factory.mktemp("gpt2") / "model")


@pytest.fixture(scope="session")
def decoder_export(decoder_dir, tmp_path_factory):
    """The tiny GPT-2 exported and optimized once per session."""
    from torchship.exporters.export import ExportOptions, export
    from torchship.optimizers import optimize

    out = tmp_path_factory.mktemp("gpt2-export") / "onnx"
    export(str(decoder_dir), out, ExportOptions(kind="decoder"))
    optimize(out)
    return out


@pytest.fixture(scope="session")
def unet_dirs(tmp_path_factory):
    """Factory: a saved tiny diffusers UNet folder per input channel count (4: text-to-image, 9: inpainting)."""
    from tiny import save_unet_dir

    cache = {}

    def get(in_channels: int = 4) -> Path:
        if in_channels not in cache:
            cache[in_channels] = save_unet_dir(tmp_path_factory.mktemp(f"unet{in_channels}") / "unet", in_channels)
        return cache[in_channels]

    return get
