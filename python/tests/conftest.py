"""Fixtures: real servers (`shm-runtime serve` in child processes) for the package's tests.

The server binary is $SHM_RUNTIME_BIN, else the repository's target/release/shm-runtime (built by
scripts/test.sh with the model features). A missing binary, model or tool fails the test with
the command that provides it; nothing is skipped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import shm_runtime

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(
    os.environ.get("SHM_RUNTIME_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "shm-runtime"
)
SETUP = "run `scripts/setup.sh` (models) and `scripts/test.sh` (binaries), or set SHM_RUNTIME_BIN"


def binary(name: str) -> Path:
    """A binary the tests run: the server command or one of the repository's example programs
    (shm-examples' `infer` and `generate`, built by `cargo test --release --workspace`)."""
    if name == "shm-runtime" and os.environ.get("SHM_RUNTIME_BIN"):
        path = Path(os.environ["SHM_RUNTIME_BIN"])
    else:
        path = REPO / "target" / "release" / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: {SETUP}")
    return path


def unique(tag: str) -> str:
    return f"pytest-{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class Server:
    """`shm-runtime serve` in a child process, stopped (SIGTERM, then SIGKILL) at the end."""

    def __init__(self, name: str, args: list[str], ready_within: float = 120.0) -> None:
        self.name = name
        self.log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"{name}.log", "w+b")
        self.proc = subprocess.Popen(
            [str(binary("shm-runtime")), "serve", "--name", name, *args],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + ready_within
        while True:
            if self.proc.poll() is not None:
                self.log.seek(0)
                pytest.fail(
                    f"shm-runtime serve {name} exited with {self.proc.returncode} before it "
                    f"was ready ({SETUP}):\n{self.log.read().decode(errors='replace')}"
                )
            try:
                with shm_runtime.Client(name, timeout=5.0) as c:
                    if c.health().ready:
                        return
            except (shm_runtime.ServiceNotFoundError, shm_runtime.ServerGoneError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"shm-runtime serve {name} not ready within {ready_within} s")
            time.sleep(0.05)

    def status(self) -> dict:
        out = subprocess.run(
            [str(binary("shm-runtime")), "status", self.name, "--json"],
            check=True,
            capture_output=True,
        )
        return json.loads(out.stdout)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


@pytest.fixture(scope="session")
def echo_service():
    """Built-in backends only: `echo` (answers its input) and `slow` (20 ms per token)."""
    s = Server(unique("echo"), ["--model", "echo=echo", "--model", "slow=sleep"])
    yield s
    s.stop()


def model_path(relative: str) -> Path:
    p = CACHE / relative
    if not p.is_file():
        pytest.fail(f"{p} is missing: run scripts/setup.sh")
    return p


@pytest.fixture(scope="session")
def model_service():
    """The demo's real models (MiniLM embeddings and sentiment through ONNX Runtime, SmolLM2
    through llama.cpp) from the shm-runtime cache."""
    for f in (
        "models/minilm/model.onnx",
        "models/minilm-sentiment/model.onnx",
        "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    ):
        model_path(f)
    s = Server(unique("models"), ["--config", str(REPO / "examples" / "demo.toml")])
    yield s
    s.stop()


@pytest.fixture
def client(echo_service):
    with shm_runtime.Client(echo_service.name) as c:
        yield c


def run_json(cmd: list[str]) -> dict:
    """Runs one of the repository's Rust programs and parses its JSON output."""
    out = subprocess.run(cmd, capture_output=True, timeout=300)
    if out.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr.decode()}")
    return json.loads(out.stdout)


# Visible in the assertion messages of the tests that wait for something.
sys.dont_write_bytecode = True
