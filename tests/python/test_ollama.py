"""flint serve against the official `ollama` Python client (Ollama's API at /api/*)."""

import httpx
import ollama
import pytest

from conftest import API_KEY, MODEL

PROMPT = "The capital of France is"
CHAT = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "num_predict": 16}


def test_generate_equals_openai_completions(client, ollama_client):
    want = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16, temperature=0)
    r = ollama_client.generate(model=MODEL, prompt=PROMPT, raw=True, options=GREEDY)
    assert r.response == want.choices[0].text
    assert r.done and r.done_reason == want.choices[0].finish_reason
    assert r.model == MODEL
    assert r.prompt_eval_count == want.usage.prompt_tokens
    assert r.eval_count == want.usage.completion_tokens
    assert len(r.context) == r.prompt_eval_count + r.eval_count
    assert r.total_duration >= r.eval_duration > 0


def test_generate_stream_equals_whole(ollama_client):
    whole = ollama_client.generate(model=MODEL, prompt=PROMPT, raw=True, options=GREEDY)
    parts = list(ollama_client.generate(model=MODEL, prompt=PROMPT, raw=True, options=GREEDY, stream=True))
    assert all(not p.done for p in parts[:-1])
    assert parts[-1].done and parts[-1].done_reason in ("stop", "length")
    assert "".join(p.response for p in parts) == whole.response
    assert parts[-1].eval_count == whole.eval_count


def test_generate_templated(client, ollama_client):
    # Not raw: the prompt goes through the model's chat template, like a one-message chat.
    want = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPT}], max_tokens=16, temperature=0
    )
    r = ollama_client.generate(model=MODEL, prompt=PROMPT, options=GREEDY)
    assert r.response == want.choices[0].message.content


def test_chat(client, ollama_client):
    want = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=24, temperature=0)
    opts = {"temperature": 0, "num_predict": 24}
    r = ollama_client.chat(model=MODEL, messages=CHAT, options=opts)
    assert r.message.role == "assistant"
    assert r.message.content == want.choices[0].message.content
    assert "Paris" in r.message.content
    chunks = list(ollama_client.chat(model=MODEL, messages=CHAT, options=opts, stream=True))
    last = chunks[-1]
    assert last.done and last.done_reason in ("stop", "length")
    assert all(not c.done for c in chunks[:-1])
    assert "".join(c.message.content for c in chunks) == r.message.content
    assert last.eval_count == r.eval_count


def test_latest_tag_is_the_same_model(ollama_client):
    a = ollama_client.generate(model=MODEL, prompt=PROMPT, raw=True, options=GREEDY)
    b = ollama_client.generate(model=MODEL + ":latest", prompt=PROMPT, raw=True, options=GREEDY)
    assert b.model == MODEL + ":latest"
    assert a.response == b.response
    assert ollama_client.show(MODEL + ":latest").modelinfo == ollama_client.show(MODEL).modelinfo


def test_list_show_ps(ollama_client):
    models = ollama_client.list().models
    names = [m.model for m in models]
    assert MODEL + ":latest" in names
    m = models[names.index(MODEL + ":latest")]
    assert m.size > 0 and len(m.digest) == 64 and m.modified_at is not None
    assert m.details.family == "llama" and m.details.format == "safetensors"

    show = ollama_client.show(MODEL)
    assert "completion" in show.capabilities
    info = show.modelinfo
    assert info["general.architecture"] == "llama"
    assert info["general.parameter_count"] > 100_000_000
    assert info["llama.context_length"] > 0
    assert show.details.parameter_size.endswith("M")
    assert show.template

    running = ollama_client.ps().models
    p = next(p for p in running if p.model == MODEL + ":latest")
    assert p.size >= m.size and p.context_length == info["llama.context_length"]
    assert p.expires_at is not None


def test_errors(ollama_client):
    with pytest.raises(ollama.ResponseError) as e:
        ollama_client.generate(model="no-such-model", prompt="hi")
    assert e.value.status_code == 404 and "not found" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        ollama_client.chat(model="no-such-model", messages=CHAT)
    assert e.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as e:
        ollama_client.show("no-such-model")
    assert e.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as e:
        ollama_client.generate(model=MODEL, prompt="hi", options={"temperature": "hot"})
    assert e.value.status_code == 400 and "options.temperature" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        ollama_client.generate(model=MODEL, prompt="hi", format="json")
    assert e.value.status_code == 400 and "format" in e.value.error


def test_empty_prompt_loads(ollama_client):
    r = ollama_client.generate(model=MODEL)
    assert r.done and r.done_reason == "load"


def test_probe_and_version(server):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    r = httpx.get(server + "/", headers=headers)
    assert r.status_code == 200 and r.text == "Ollama is running"
    assert httpx.head(server + "/", headers=headers).status_code == 200
    assert httpx.get(server + "/api/version", headers=headers).json() == {"version": "0.6.0"}
