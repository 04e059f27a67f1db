"""Starts `flint serve` on the default model, the way a user does, for the whole session.

FLINT_BIN points at the binary (default target/release/flint). The server gets a random free
port, an API key, and small limits so the error paths (413, 429) are reachable.
"""

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "test-key-123"
MODEL = "smollm2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(*extra: str, api_key: str | None = API_KEY):
    binary = os.environ.get("FLINT_BIN", str(ROOT / "target" / "release" / "flint"))
    port = free_port()
    data_dir = tempfile.mkdtemp(prefix="flint-data-")
    atexit.register(shutil.rmtree, data_dir, ignore_errors=True)
    args = [binary, "serve", "--port", str(port), "--served-model-name", MODEL,
            "--kv-cache-memory", "512MiB", "--max-body-bytes", "65536",
            # Fine-tuning files and jobs: a fresh store per server, so runs never see each other's.
            "--data-dir", data_dir, *extra]
    env = dict(os.environ)
    env.pop("FLINT_API_KEY", None)
    if api_key:
        args += ["--api-key", api_key]
    log = open(ROOT / "target" / f"flint-serve-{port}.log", "w")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"flint serve exited with {proc.returncode}; see {log.name}")
        try:
            if httpx.get(base + "/ready", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("flint serve did not become ready in 120 s")


@pytest.fixture(scope="session")
def server():
    proc, base = start_server()
    yield base
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="session")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server + "/v1", api_key=API_KEY, max_retries=0)


@pytest.fixture(scope="session")
def ollama_client(server):
    import ollama

    return ollama.Client(host=server, headers={"Authorization": f"Bearer {API_KEY}"})
