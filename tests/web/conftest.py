"""Shared pieces of the web tests: the tiny test pipeline (built once) and a real server in a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from unclip.pipeline import GenerationDefaults
from unclip.pipeline.builder import build_pipeline

FAST = GenerationDefaults(prior_steps=2, decoder_steps=2, upsampler_steps=2, inversion_steps=2, best_of=1)


@pytest.fixture(scope="session")
def tiny_pipe():
    """An untrained tiny pipeline (32 px) with 2-step defaults: what the test model preset gives, in seconds."""
    return build_pipeline("tiny", defaults=FAST)


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_pipe, tmp_path_factory) -> Path:
    """``tiny_pipe`` saved as a pipeline directory (what ``unclip serve --model DIR`` loads)."""
    return tiny_pipe.save_pretrained(tmp_path_factory.mktemp("web_model"))


@pytest.fixture(scope="module")
def client(tiny_pipe):
    """The API in-process (FastAPI's TestClient) on ``tiny_pipe``, 64 KiB bodies, at most 4 images; one per module."""
    from fastapi.testclient import TestClient

    from unclip.web.app import create_app
    from unclip.web.config import ServeConfig

    app = create_app(tiny_pipe, ServeConfig(model="tiny-test", max_body_bytes=64 * 1024, max_images=4))
    with TestClient(app) as c:
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m unclip.cli serve`` on a free local port; ``url``, ``pid``, ``rss_kib()``, ``alive()``."""

    def __init__(self, model: str | Path, log_path: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONUNBUFFERED="1")
        self.log_path = log_path
        self.log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        cmd = [sys.executable, "-m", "unclip.cli", "serve", "--model", str(model), "--port", str(self.port),
               "--threads", "1", "--log-level", "warning", *extra]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}): {log_path.read_text()}")
            try:
                with urllib.request.urlopen(self.url + "/api/v1/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server did not answer within 120 s: {log_path.read_text()}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_kib(self) -> int:
        """Resident memory of the server process (Linux /proc)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS line")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="session")
def start_server(tmp_path_factory):
    """Factory: ``start_server(model, *options)`` -> a running :class:`ServerProcess` (stopped at the end)."""
    servers: list[ServerProcess] = []

    def start(model, *extra: str) -> ServerProcess:
        log = tmp_path_factory.mktemp("server_log") / "server.log"
        server = ServerProcess(model, log, *extra)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
