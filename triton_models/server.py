"""A local, real Triton Inference Server on CPU: the `tritonserver` binary of the nvidia-pytriton wheel.

That build has only the python backend, so `prepare_repository` lays out a repository where the python
backend embedder (product_embedder_py: ONNX Runtime inside, or OpenVINO for an int8 graph) is served under
the name `product_embedder`, the python backend shopper model (user_recommender_py) under
`user_recommender` and the python backend detector (product_detector_py) under `product_detector`, beside `preprocess` and the `recognizer` ensemble. Clients cannot tell it from the GPU deployment, which
serves this folder as it is with the official Triton image (see deploy/).

Used by `seesku triton serve`, the tests' session fixture and bench/triton_vs_onnx.py.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from vision.preprocess import Limits

REPOSITORY = Path(__file__).resolve().parent
PROJECT_ROOT = REPOSITORY.parent
# Served by the python-only CPU build: the embedder's python variant takes the embedder's name.
# The python backend stub is compiled against numpy 1 (the wheel pins numpy<2) and embeds the system
# libpython, so its models import from their own package folder, installed by `make triton`.
STUB_PACKAGES = Path(sys.prefix) / "triton-stub"
CPU_MODELS = {
    "product_embedder": "product_embedder_py",
    "preprocess": "preprocess",
    "recognizer": "recognizer",
    "user_recommender": "user_recommender_py",
    "product_detector": "product_detector_py",
    "object_crops": "object_crops",
    "objects": "objects",
}


class TritonNotInstalled(RuntimeError):
    pass


@dataclass(frozen=True)
class TritonInstall:
    binary: Path
    backends: Path  # python backend library + utils, the stub for this Python beside them
    libs: Path  # the wheel's bundled shared libraries (LD_LIBRARY_PATH)
    stub: Path
    stub_packages: Path  # numpy<2, onnxruntime, openvino, pillow, pydantic for the stub: built against numpy 1


def find_install() -> TritonInstall:
    """The tritonserver binary, its python backend and libraries from the nvidia-pytriton wheel.

    Found without importing pytriton (its client pulls in gevent, which serving does not need)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonNotInstalled(
            "the Triton server is not installed: `pip install --no-deps nvidia-pytriton==0.7.0` (make triton does it)"
        )
    package = Path(list(spec.submodule_search_locations)[0])
    root = package / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    install = TritonInstall(
        root / "bin" / "tritonserver", root / "backends", package.parent / "nvidia_pytriton.libs", stub, STUB_PACKAGES
    )
    for path in (install.binary, install.backends / "python" / "libtriton_python.so", install.stub):
        if not path.exists():
            raise TritonNotInstalled(f"incomplete nvidia-pytriton install (Python {version}): {path} is missing")
    if not (STUB_PACKAGES / "numpy").exists():
        raise TritonNotInstalled(
            f"the python backend's packages are missing: {STUB_PACKAGES} (make triton installs them)"
        )
    return install


def backend_directory(install: TritonInstall, dest: Path) -> Path:
    """One backend folder: the wheel's python backend plus the stub built for this Python version."""
    python = dest / "python"
    shutil.rmtree(python, ignore_errors=True)  # a fresh copy: a running server's stub stays untouched
    python.mkdir(parents=True)
    for item in (install.backends / "python").iterdir():
        if item.is_file():
            shutil.copy2(item, python / item.name)
    shutil.copy2(install.stub, python / "triton_python_backend_stub")
    return dest


def _write_config(source: Path, dest: Path, name: str, parameters: dict[str, str] | None = None) -> None:
    """The model's config under its served name, with `parameters` given their values."""
    lines = source.read_text().splitlines()
    lines = [f'name: "{name}"' if line.startswith("name:") else line for line in lines]
    for key, value in (parameters or {}).items():
        prefix = f'parameters {{ key: "{key}"'
        lines = [
            f'{prefix} value: {{ string_value: "{value}" }} }}' if line.startswith(prefix) else line for line in lines
        ]
    dest.write_text("\n".join(lines) + "\n")


def prepare_repository(dest: Path, embedder_dir: Path | None = None, limits: Limits | None = None) -> Path:
    """A model repository for the python-only CPU build, at `dest` (replaced).

    embedder_dir: the exported embedder to serve (manifest.json + graph); the shipped one by default.
    limits: the upload limits the preprocess model enforces (the service's; the defaults otherwise)."""
    embedder_dir = Path(embedder_dir or REPOSITORY / "product_embedder").resolve()
    if dest.exists():
        shutil.rmtree(dest)
    for served, source_name in CPU_MODELS.items():
        source, target = REPOSITORY / source_name, dest / served
        (target / "1").mkdir(parents=True)
        parameters = None
        if served in ("preprocess", "object_crops") and limits is not None:
            parameters = {"max_upload_bytes": str(limits.max_bytes), "max_image_pixels": str(limits.max_pixels)}
        _write_config(source / "config.pbtxt", target / "config.pbtxt", served, parameters)
        model_py = source / "1" / "model.py"
        if model_py.exists():
            shutil.copy2(model_py, target / "1" / "model.py")
    # Each python model reads its manifest and graph from its own folder; the graph is linked, not copied.
    from vision.detection import DetectorManifest
    from vision.manifest import ModelManifest
    from vision.recommender import RecommenderManifest

    _link_model(embedder_dir, dest / "product_embedder", ModelManifest.load(embedder_dir).onnx_file)
    recommender_dir = REPOSITORY / "user_recommender"
    _link_model(recommender_dir, dest / "user_recommender", RecommenderManifest.load(recommender_dir).onnx_file)
    detector_dir = REPOSITORY / "product_detector"
    _link_model(detector_dir, dest / "product_detector", DetectorManifest.load(detector_dir).onnx_file)
    return dest


def _link_model(source: Path, served: Path, onnx_file: str) -> None:
    shutil.copy2(source / "manifest.json", served / "manifest.json")
    graph = served / onnx_file
    graph.parent.mkdir(parents=True, exist_ok=True)
    graph.symlink_to(source / onnx_file)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


@dataclass
class TritonServer:
    """One tritonserver process on loopback ports. `start()` returns once every model is ready."""

    workdir: Path
    grpc_port: int = 8001
    http_port: int = 8002
    metrics_port: int = 8003
    embedder_dir: Path | None = None
    limits: Limits | None = None  # what the preprocess model accepts (the defaults when None)
    log_file: Path | None = None
    host: str = "127.0.0.1"
    inherit_output: bool = False  # the server's log on this process's stdout (else log_file, else dropped)
    process: subprocess.Popen | None = field(default=None, init=False)

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def inference_setting(self) -> str:
        return f"triton://{self.grpc_url}"

    def prepare(self) -> None:
        install = find_install()
        self.workdir.mkdir(parents=True, exist_ok=True)
        prepare_repository(self.workdir / "models", self.embedder_dir, self.limits)
        backend_directory(install, self.workdir / "backends")
        self._install = install

    def start(self, timeout_s: float = 120.0) -> TritonServer:
        if not hasattr(self, "_install"):
            self.prepare()
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(self._install.libs), env.get("LD_LIBRARY_PATH")]))
        # The stub embeds the system libpython and reads these paths (see the models' model.py): its own
        # packages first, then this project for `vision`.
        env["PYTHONPATH"] = os.pathsep.join([str(self._install.stub_packages), str(PROJECT_ROOT)])
        command = [
            str(self._install.binary),
            f"--model-repository={self.workdir / 'models'}",
            f"--backend-directory={self.workdir / 'backends'}",
            f"--grpc-port={self.grpc_port}",
            f"--http-port={self.http_port}",
            f"--metrics-port={self.metrics_port}",
            f"--grpc-address={self.host}",
            f"--http-address={self.host}",
            f"--metrics-address={self.host}",
            "--exit-on-error=true",
            "--strict-readiness=true",
            "--log-verbose=0",
        ]
        for port in (self.grpc_port, self.http_port, self.metrics_port):
            if not port_free(self.host, port):  # else the readiness probe could find another server
                raise RuntimeError(f"port {self.host}:{port} is already in use")
        log = open(self.log_file, "ab") if self.log_file else None if self.inherit_output else subprocess.DEVNULL
        self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if self.log_file:
            log.close()
        self.wait_ready(timeout_s)
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.http_port}/v2/health/ready", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"tritonserver exited with {self.process.returncode}; see {self.log_file or 'its log'}"
                )
            if self.ready():
                return
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"tritonserver not ready after {timeout_s:.0f} s; see {self.log_file or 'its log'}")

    def terminate(self) -> None:
        """Ask the server and its python backend stubs to exit (safe in a signal handler: no waiting)."""
        if self.process is not None and self.process.returncode is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
