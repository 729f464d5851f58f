"""A real tritonserver for a torchship model repository: set up once, started on loopback, stopped cleanly.

The server is the one NVIDIA ships in the PyPI wheel ``nvidia-pytriton`` (tritonserver with the Python
backend, CPU). That wheel pins numpy < 2, which torchship's own environment does not take, so
``torchship serve --setup`` keeps both apart: it unpacks the wheel's server tree (no Python package is
installed) and builds a small environment for the Python backend (the packages ``serving/environment.py``
lists: numpy 1.x, and onnxruntime and tokenizers at the versions torchship uses) under one home folder,
``~/.cache/torchship/triton`` or ``$TORCHSHIP_TRITON_HOME``.

This server has no onnxruntime, TensorRT or OpenVINO backend: repositories written with ``--runtime
python`` serve here; the others serve in NVIDIA's container image. A repository is shared: the server loads
every model folder in it whose backend it has, torchship's and anyone else's as they are, and leaves out the
others with one line each. It reads them through a temporary folder of links to those it loads, so Triton's
default model control stays on (explicit control would let any client load models and upload their files).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from torchship.errors import BackendUnavailable, InputError, TorchshipError
from torchship.serving.environment import UNRECORDED, change, entries, requirements, versions
from torchship.serving.inventory import HERE_BACKENDS, servable

WHEEL = "nvidia-pytriton==0.7.0"
SERVER_VERSION = "2.51"  # the tritonserver inside that wheel
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
# on SIGTERM the server finishes requests in flight, then waits for clients to close their connections: an idle
# keep-alive connection would hold it for Triton's default 30 s
DRAIN_S = 5
SHM_PREFIX = "torchship"


class ServeError(TorchshipError):
    exit_code = 1


def home() -> Path:
    return Path(os.environ.get("TORCHSHIP_TRITON_HOME") or Path.home() / ".cache" / "torchship" / "triton")


@dataclass(frozen=True)
class Install:
    """The unpacked server and the Python backend's environment."""

    root: Path

    @property
    def binary(self) -> Path:
        return self.root / "tritonserver" / "bin" / "tritonserver"

    @property
    def backends(self) -> Path:
        return self.root / "tritonserver" / "backends"

    @property
    def caches(self) -> Path:
        return self.root / "tritonserver" / "caches"

    @property
    def libs(self) -> Path:
        return self.root / "nvidia_pytriton.libs"

    @property
    def env(self) -> Path:
        return self.root / "env"

    @property
    def info(self) -> Path:
        return self.root / "install.json"

    def complete(self) -> bool:
        return self.info.is_file() and self.binary.is_file() and (self.env / "bin" / "python").exists()

    def packages(self) -> list[str]:
        """The list of packages its environment was built with (``environment.entries()`` when it was built)."""
        try:
            return list(json.loads(self.info.read_text()).get("packages", UNRECORDED))
        except (OSError, ValueError, AttributeError):
            return []

    def outdated(self) -> str | None:
        """Why a complete install must be built again (the served list of packages changed since), or None."""
        built = self.packages()
        differs = change(built)
        return None if differs is None else (f"the server's Python environment in {self.root} was built with "
                                             f"{', '.join(built) or 'an unknown list'}, and torchship's list of "
                                             f"served packages {differs}")

    def environment(self) -> dict[str, str]:
        """The server's environment: the backend env first on PATH (the Python backend's stub imports from
        it), Python's shared library and the wheel's bundled libraries on the loader path."""
        env = dict(os.environ)
        env["PATH"] = f"{self.env / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, str(self.libs), env.get("LD_LIBRARY_PATH"))
                                                 if p)
        env.pop("PYTHONPATH", None)  # torchship's environment must not leak into the backend's
        env.setdefault("OMP_NUM_THREADS", "1")
        return env


def find_install() -> Install:
    install = Install(home())
    if not install.complete():
        raise BackendUnavailable(f"the Triton server is not set up in {install.root}; run `torchship serve --setup` "
                                 f"(downloads {WHEEL}'s server, ~55 MB, and builds its Python-backend "
                                 f"environment, ~230 MB)")
    outdated = install.outdated()
    if outdated:
        raise BackendUnavailable(f"{outdated}; run `torchship serve --setup` to build it again")
    return install


def setup(wheel: str | Path | None = None, *, progress=None) -> Install:
    """Unpack the server from ``wheel`` (or download it with pip) and build the backend environment, staged
    beside the home folder and renamed into place when whole."""
    say = progress or (lambda _msg: None)
    target = home()
    if sys.version_info[:2] < (3, 8) or sys.version_info[:2] > (3, 13):
        raise BackendUnavailable(f"the server's Python backend has stubs for Python 3.8 to 3.13, not "
                                 f"{sys.version_info[0]}.{sys.version_info[1]}")
    if wheel is not None and not Path(wheel).is_file():
        raise InputError(f"--wheel {wheel} is not a file; pass the nvidia-pytriton wheel, or leave it out")
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        if wheel is None:
            say(f"downloading {WHEEL} (the server only, not its Python package)")
            _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL, "-d", str(stage / "wheel")],
                 "pip could not download the server wheel")
            wheel = next((stage / "wheel").glob("*.whl"))
        wheel = Path(wheel)
        say(f"unpacking {wheel.name}")
        _unpack(wheel, stage)
        stub = stage / "tritonserver" / "python_backend_stubs" / f"{sys.version_info[0]}.{sys.version_info[1]}" \
            / "triton_python_backend_stub"
        shutil.copy2(stub, stage / "tritonserver" / "backends" / "python" / stub.name)
        pins = requirements()
        say(f"building the Python backend's environment ({', '.join(pins)})")
        _run([sys.executable, "-m", "venv", str(stage / "env")], "could not create the backend environment")
        _run([str(stage / "env" / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
              *pins], "pip could not install the backend environment")
        (stage / "install.json").write_text(json.dumps({"wheel": wheel.name, "server": SERVER_VERSION,
                                                        "python": sys.version.split()[0], **versions(),
                                                        "packages": entries()}, indent=2))
        if target.exists():
            shutil.rmtree(target)
        stage.rename(target)  # the stub finds the environment by the python first on PATH, wherever it lies
        return Install(target)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def _run(cmd: list[str], what: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()
        raise ServeError(f"{what}: {tail[-1] if tail else 'exit ' + str(done.returncode)}")


def _unpack(wheel: Path, stage: Path) -> None:
    """The server tree and its bundled libraries out of the wheel, with their executable bits."""
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if n.startswith(("pytriton/tritonserver/", "nvidia_pytriton.libs/"))]
        if not any(n.endswith("bin/tritonserver") for n in names):
            raise InputError(f"{wheel.name} holds no tritonserver; pass an nvidia-pytriton wheel")
        for name in names:
            if name.endswith("/"):
                continue
            dest = stage / (name[len("pytriton/"):] if name.startswith("pytriton/") else name)
            dest.parent.mkdir(parents=True, exist_ok=True)
            with z.open(name) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)
            mode = (z.getinfo(name).external_attr >> 16) & 0o777
            os.chmod(dest, 0o755 if mode & 0o111 or "/bin/" in name or name.endswith("_stub") else 0o644)


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed connection's TIME_WAIT is no owner
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Ports:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002

    def checked(self, host: str) -> "Ports":
        for flag, port in (("--http-port", self.http), ("--grpc-port", self.grpc), ("--metrics-port", self.metrics)):
            if not 0 < port < 65536:
                raise InputError(f"{flag} {port} is not a port number (1 to 65535)")
            if not port_free(port, host):
                raise InputError(f"port {port} on {host} is taken by another process; pass another {flag}")
        if len({self.http, self.grpc, self.metrics}) < 3:
            raise InputError("--http-port, --grpc-port and --metrics-port must differ")
        return self


class Server:
    """A tritonserver process serving one repository; use as a context manager, or start() and stop()."""

    def __init__(self, repo: str | Path, ports: Ports = Ports(), *, host: str = "127.0.0.1", log: Path | None = None,
                 install: Install | None = None):
        self.repo = Path(repo).resolve()
        self.ports = ports
        self.host = host
        self.install = install
        self.log_path = log
        self._own_log = log is None  # a temporary log goes when the server stops
        self.process: subprocess.Popen | None = None
        self.models: list[str] = []  # the model folders it loads
        self.skipped: list[str] = []  # one line per model it cannot serve: which, and the backend it needs
        self._view: Path | None = None  # links to the model folders it loads, the repository Triton reads
        self._log_file = None
        self.shm_prefix = f"{SHM_PREFIX}{os.getpid()}x{ports.http}_"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.ports.http}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.ports.grpc}"

    def command(self) -> list[str]:
        i = self.install
        return [str(i.binary), f"--model-repository={self._view or self.repo}", f"--backend-directory={i.backends}",
                f"--cache-directory={i.caches}", f"--http-address={self.host}", f"--grpc-address={self.host}",
                f"--metrics-address={self.host}", f"--http-port={self.ports.http}", f"--grpc-port={self.ports.grpc}",
                f"--metrics-port={self.ports.metrics}", "--allow-gpu-metrics=false", "--exit-on-error=false", f"--exit-timeout-secs={DRAIN_S}",
                "--strict-readiness=true", f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
                "--log-verbose=0"]

    def start(self, timeout_s: float = READY_TIMEOUT_S, *, progress=None) -> "Server":
        self.models, self.skipped = servable(self.repo, HERE_BACKENDS)  # refused before anything starts
        for line in self.skipped if progress else ():
            progress(f"left out {line}")
        self.install = self.install or find_install()
        self.ports.checked(self.host)
        self._view = Path(tempfile.mkdtemp(prefix="torchship-repository-"))
        try:  # from here on a failure removes the links, the log and the process with them
            for name in self.models:
                (self._view / name).symlink_to(self.repo / name, target_is_directory=True)
            if progress:
                progress(f"starting tritonserver on {self.host} (log: {self.log_path or 'a temporary file'})")
            if self.log_path is None:
                self.log_path = Path(tempfile.mkstemp(prefix="tritonserver-", suffix=".log")[1])
            self._log_file = open(self.log_path, "wb")
            self.process = subprocess.Popen(self.command(), stdout=self._log_file, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=self.install.environment(),
                                            start_new_session=True)
            self._wait_ready(self.models, timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _get(self, path: str, method: str = "GET"):
        request = urllib.request.Request(self.http_url + path, method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()

    def _wait_ready(self, models: list[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServeError(f"tritonserver exited with code {self.process.returncode} before it was ready: "
                                 f"{self.log_tail()}")
            try:
                _status, body = self._get("/v2/repository/index", "POST")
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
                continue
            states = {m["name"]: m for m in json.loads(body)}
            failed = [m for m in states.values() if m.get("state") == "UNAVAILABLE" and m["name"] in models]
            if failed:
                m = failed[0]
                reason = (m.get("reason") or self.log_tail()).replace(str(self._view), str(self.repo))
                raise ServeError(f"model {m['name']} failed to load: {reason}")
            if all(states.get(n, {}).get("state") == "READY" for n in models):
                try:
                    if self._get("/v2/health/ready")[0] == 200:
                        return
                except (urllib.error.URLError, OSError):
                    pass
            time.sleep(0.2)
        raise ServeError(f"tritonserver was not ready after {timeout_s:.0f} s: {self.log_tail()}")

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = Path(self.log_path).read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        errors = [line for line in text if line.startswith("E")] or text
        return " | ".join(errors[-lines:])

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT_S; the process group is reaped and this server's
        shared-memory regions removed. Returns the server's exit code."""
        code = None
        if self.process is not None:
            if self.process.poll() is None:
                try:
                    os.killpg(self.process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    self.process.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    os.killpg(self.process.pid, signal.SIGKILL)
                    self.process.wait()
            try:  # the Python backend's stubs, if any outlived the server
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            code = self.process.returncode
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        for leftover in Path("/dev/shm").glob(f"{self.shm_prefix}*"):
            leftover.unlink(missing_ok=True)
        if self._own_log and self.log_path is not None:
            Path(self.log_path).unlink(missing_ok=True)
        if self._view is not None:  # the links only, never what they point to
            for link in self._view.iterdir():
                link.unlink()
            self._view.rmdir()
            self._view = None
        return code

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
