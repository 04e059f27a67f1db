"""flint serve against the official `openai` Python client."""

import asyncio
import signal
import threading
import time

import httpx
import openai
import pytest

from conftest import API_KEY, MODEL, start_server

CHAT = [{"role": "user", "content": "What is the capital of France?"}]


def test_models(client):
    models = client.models.list()
    # The base model first; adapters (fine-tuned ones from other tests) after it, as its children.
    assert models.data[0].id == MODEL
    assert all(m.id.startswith(f"ft:{MODEL}:") for m in models.data[1:])
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_chat_non_stream(client):
    r = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=20, temperature=0)
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    assert r.choices[0].message.role == "assistant"
    assert "Paris" in r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streamed_text_equals_non_streamed_text(client):
    kw = dict(model=MODEL, messages=CHAT, max_tokens=24, temperature=0)
    whole = client.chat.completions.create(**kw).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishes) == 1 and chunks[-1].choices[0].finish_reason == finishes[0]


def test_completions_stream_and_non_stream(client):
    kw = dict(model=MODEL, prompt="The capital of France is", max_tokens=12, temperature=0)
    whole = client.completions.create(**kw)
    assert whole.object == "text_completion"
    stream = client.completions.create(stream=True, **kw)
    assert "".join(c.choices[0].text for c in stream if c.choices) == whole.choices[0].text
    many = client.completions.create(model=MODEL, prompt=["Hello", "One, two,"], max_tokens=4, temperature=0, n=2)
    assert sorted(c.index for c in many.choices) == [0, 1, 2, 3]
    ids = client.completions.create(model=MODEL, prompt=[504, 3458, 282], max_tokens=3, temperature=0)
    assert ids.usage.prompt_tokens == 3


def test_include_usage(client):
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=5, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    last = chunks[-1]
    assert last.choices == []
    assert last.usage.completion_tokens == 5 or last.usage.completion_tokens <= 5
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens


def test_n_and_seed(client):
    kw = dict(model=MODEL, messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=16,
              temperature=1.0, seed=1234)
    a = client.chat.completions.create(n=2, **kw)
    assert [c.index for c in a.choices] == [0, 1]
    b = client.chat.completions.create(n=2, **kw)
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]


def test_logprobs(client):
    r = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=6, temperature=0,
                                       logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for t in content:
        assert len(t.top_logprobs) == 3
        assert t.top_logprobs[0].token == t.token
        assert t.logprob <= 0
    c = client.completions.create(model=MODEL, prompt="Hello", max_tokens=4, temperature=0, logprobs=2)
    lp = c.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4


def test_stop(client):
    kw = dict(model=MODEL, messages=CHAT, max_tokens=20, temperature=0)
    whole = client.chat.completions.create(**kw).choices[0].message.content
    assert "Paris" in whole
    cut = client.chat.completions.create(stop=["Paris"], **kw).choices[0]
    assert cut.message.content == whole[: whole.index("Paris")]
    assert cut.finish_reason == "stop"
    cut = client.chat.completions.create(stop="Paris", **kw).choices[0]
    assert cut.finish_reason == "stop"


def test_user_typed_special_tokens_are_text(client):
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say <|im_end|> please"}], max_tokens=1, temperature=0)
    plain = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say please"}], max_tokens=1, temperature=0)
    # "<|im_end|>" typed by a user is several ordinary tokens, not the one control token.
    assert r.usage.prompt_tokens > plain.usage.prompt_tokens + 1


def test_content_parts_and_multi_turn(client):
    r = client.chat.completions.create(model=MODEL, max_tokens=4, temperature=0, messages=[
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": " there"}]},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
    ])
    assert r.choices[0].message.content


def test_errors(client, server):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=CHAT, top_p=3)
    assert e.value.body["param"] == "top_p"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=CHAT, temperature=-1)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=100000)
    assert "context" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=CHAT, n=0)
    assert e.value.body["param"] == "n"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-5", messages=CHAT)
    bad = openai.OpenAI(base_url=server + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    h = {"Authorization": f"Bearer {API_KEY}", "content-type": "application/json"}
    r = httpx.post(server + "/v1/chat/completions", content=b"{not json", headers=h)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(server + "/v1/chat/completions", content=b"x" * 70000, headers=h)
    assert r.status_code == 413
    r = httpx.get(server + "/v1/models", headers={"X-API-Key": API_KEY})
    assert r.status_code == 200
    assert httpx.get(server + "/health").status_code == 200
    assert httpx.get(server + "/ready").status_code == 200


def test_queue_full_is_429_with_retry_after():
    proc, base = start_server("--max-num-seqs", "1", "--max-waiting-requests", "0", api_key=None)
    try:
        body = {"model": MODEL, "prompt": "Count:", "max_tokens": 200, "ignore_eos": True, "stream": True}
        with httpx.Client(timeout=30) as c:
            with c.stream("POST", base + "/v1/completions", json=body) as first:
                assert first.status_code == 200
                r = c.post(base + "/v1/completions", json={**body, "stream": False})
                assert r.status_code == 429
                assert r.headers["retry-after"]
                assert r.json()["error"]["type"] == "rate_limit_error"
            time.sleep(0.5)
            r = c.post(base + "/v1/completions", json={**body, "stream": False, "max_tokens": 2})
            assert r.status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_cancelled_requests_free_the_engine(server):
    """200 requests abandoned by a client timeout, then a fresh request finishes within 5 s."""
    from openai import AsyncOpenAI

    async def main():
        impatient = AsyncOpenAI(base_url=server + "/v1", api_key=API_KEY, max_retries=0, timeout=0.5)
        body = dict(model=MODEL, prompt="Once upon a time", max_tokens=500, extra_body={"ignore_eos": True})
        results = await asyncio.gather(*(impatient.completions.create(**body) for _ in range(200)),
                                       return_exceptions=True)
        assert all(isinstance(r, Exception) for r in results)
        await impatient.close()

    asyncio.run(main())
    fresh = httpx.Client(timeout=5)
    start = time.time()
    r = fresh.post(server + "/v1/completions", headers={"Authorization": f"Bearer {API_KEY}"},
                   json={"model": MODEL, "prompt": "Hi", "max_tokens": 4})
    assert r.status_code == 200, r.text
    assert time.time() - start < 5


def test_sigterm_drains_in_flight_requests():
    proc, base = start_server(api_key=None)
    result = {}

    def long_request():
        r = httpx.post(base + "/v1/completions", timeout=120,
                       json={"model": MODEL, "prompt": "Count:", "max_tokens": 40, "ignore_eos": True})
        result["status"] = r.status_code
        result["tokens"] = r.json()["usage"]["completion_tokens"]

    t = threading.Thread(target=long_request)
    t.start()
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    t.join(timeout=120)
    assert proc.wait(timeout=60) == 0
    assert result == {"status": 200, "tokens": 40}
