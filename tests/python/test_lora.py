"""LoRA adapters over HTTP with the official OpenAI client: vLLM's load/unload routes, the
adapter as `model`, adapters in /v1/models. (Exactness against peft is checked in Rust on
committed fixtures; here a random adapter for the default model is written on the fly.)"""

import json
import os
import random
import struct
from pathlib import Path

import httpx
import openai
import pytest

from conftest import API_KEY, MODEL, start_server

HEADERS = {"Authorization": f"Bearer {API_KEY}"}


def default_model_config() -> dict:
    home = Path(os.environ.get("FLINT_HOME", Path.home() / ".cache" / "flint"))
    return json.loads((home / "models" / "smollm2-135m-instruct" / "config.json").read_text())


def write_adapter(path: Path, cfg: dict, r: int = 8) -> None:
    """A PEFT LoRA adapter on q_proj and v_proj with small random weights, written as
    safetensors by hand (8-byte header length, JSON header, little-endian f32 data)."""
    path.mkdir(parents=True)
    h, heads, kv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = h // heads
    rng = random.Random(7)
    tensors, blobs, offset = {}, [], 0
    for layer in range(cfg["num_hidden_layers"]):
        for module, out in (("q_proj", heads * d), ("v_proj", kv * d)):
            key = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            for half, shape in (("lora_A", [r, h]), ("lora_B", [out, r])):
                n = shape[0] * shape[1]
                data = struct.pack(f"<{n}f", *(rng.uniform(-0.05, 0.05) for _ in range(n)))
                tensors[f"{key}.{half}.weight"] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(data)]}
                blobs.append(data)
                offset += len(data)
    header = json.dumps(tensors).encode()
    header += b" " * (-len(header) % 8)
    (path / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"".join(blobs))
    config = {"peft_type": "LORA", "r": r, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], "bias": "none"}
    (path / "adapter_config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def lora_server(tmp_path_factory):
    lora_dir = tmp_path_factory.mktemp("adapters")
    write_adapter(lora_dir / "qv-lora", default_model_config())
    proc, base = start_server("--lora-dir", str(lora_dir), "--max-loras", "2")
    yield base
    proc.terminate()
    proc.wait(timeout=30)


def test_load_use_list_and_unload_an_adapter(lora_server):
    client = openai.OpenAI(base_url=lora_server + "/v1", api_key=API_KEY, max_retries=0)
    r = httpx.post(lora_server + "/v1/load_lora_adapter", headers=HEADERS,
                   json={"lora_name": "qv", "lora_path": "qv-lora"})
    assert r.status_code == 200, r.text
    assert "added successfully" in r.text

    cards = {m.id: m for m in client.models.list().data}
    assert set(cards) == {MODEL, "qv"}
    assert cards["qv"].model_extra["parent"] == MODEL

    done = client.completions.create(model="qv", prompt="The capital of France is", max_tokens=8, temperature=0)
    assert done.model == "qv"
    assert done.usage.completion_tokens == 8
    # Streaming through the adapter gives the same text, and the base model still answers.
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="qv", prompt="The capital of France is", max_tokens=8, temperature=0, stream=True))
    assert streamed == done.choices[0].text
    chat = client.chat.completions.create(model="qv", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert chat.model == "qv"
    assert client.completions.create(model=MODEL, prompt="Hi", max_tokens=2).model == MODEL

    r = httpx.post(lora_server + "/v1/unload_lora_adapter", headers=HEADERS, json={"lora_name": "qv"})
    assert r.status_code == 200, r.text
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="qv", prompt="Hi", max_tokens=2)
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_bad_adapter_requests_are_refused_by_name(lora_server):
    def load(body):
        return httpx.post(lora_server + "/v1/load_lora_adapter", headers=HEADERS, json=body)

    r = load({"lora_name": "x", "lora_path": "../../etc"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "lora_path"
    r = load({"lora_name": "x", "lora_path": "/etc"})
    assert r.status_code == 400 and "outside" in r.json()["error"]["message"]
    r = load({"lora_path": "qv-lora"})
    assert r.status_code == 400 and "lora_name" in r.json()["error"]["message"]
    r = httpx.post(lora_server + "/v1/unload_lora_adapter", headers=HEADERS, json={"lora_name": "never-loaded"})
    assert r.status_code == 404
    client = openai.OpenAI(base_url=lora_server + "/v1", api_key=API_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-adapter", prompt="Hi", max_tokens=2)
