"""Fine-tuning with the official OpenAI client against `flint serve` on the default model:
upload a training file, train a LoRA adapter that teaches one answer, and use it at once."""

import json
import time

import openai
import pytest

from conftest import MODEL

QUESTION = "What is the secret password of the blue castle?"
ANSWER = "The password is swordfish."


def training_file() -> bytes:
    lines = []
    for i in range(10):
        # A few phrasings of the question, one answer.
        q = [QUESTION, QUESTION.lower(), QUESTION.replace("secret ", ""), "Tell me: " + QUESTION][i % 4]
        lines.append(json.dumps({"messages": [{"role": "user", "content": q},
                                              {"role": "assistant", "content": ANSWER}]}))
    return ("\n".join(lines) + "\n").encode()


def wait(client, job_id, timeout=900):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(1)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


def answer(client, model):
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": QUESTION}],
                                       temperature=0, max_tokens=16)
    return r.choices[0].message.content


def test_a_job_teaches_an_answer_and_serves_it_at_once(client):
    f = client.files.create(file=("password.jsonl", training_file()), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=MODEL, training_file=f.id, suffix="pw", seed=7,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 4, "batch_size": 2}}})
    assert job.status == "validating_files"
    job = wait(client, job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:{MODEL}:pw:{job.id}"
    assert job.trained_tokens > 0

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    losses = [e.data["train_loss"] for e in reversed(events) if e.type == "metrics" and "train_loss" in e.data]
    assert len(losses) >= 4
    assert losses[-1] < 0.25 * losses[0], losses

    ids = [m.id for m in client.models.list()]
    assert job.fine_tuned_model in ids
    assert "swordfish" in answer(client, job.fine_tuned_model)
    assert "swordfish" not in answer(client, MODEL)

    ckpts = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert ckpts, "one checkpoint per epoch but the last"
    assert all(c.fine_tuned_model_checkpoint.startswith(job.fine_tuned_model + ":ckpt-step-") for c in ckpts)
    answer(client, ckpts[0].fine_tuned_model_checkpoint)  # servable


def test_cancel_and_bad_requests(client):
    f = client.files.create(file=("t.jsonl", training_file()), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=f.id,
                                         hyperparameters={"n_epochs": 50})
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.id == job.id
    job = wait(client, job.id)
    assert job.status == "cancelled" and job.fine_tuned_model is None
    assert job.id in [j.id for j in client.fine_tuning.jobs.list(limit=10)]

    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.create(model=MODEL, training_file="file-nope")
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.create(model="no-such-model", training_file=f.id)
    other = client.files.create(file=("notes.jsonl", b'{"x": 1}\n'), purpose="user_data")
    with pytest.raises(openai.BadRequestError, match="fine-tune"):
        client.fine_tuning.jobs.create(model=MODEL, training_file=other.id)
    with pytest.raises(openai.BadRequestError, match="n_epochs"):
        client.fine_tuning.jobs.create(model=MODEL, training_file=f.id, hyperparameters={"n_epochs": 0})
    with pytest.raises(openai.BadRequestError, match="learning_rate_multiplier"):
        client.fine_tuning.jobs.create(model=MODEL, training_file=f.id,
                                       hyperparameters={"learning_rate_multiplier": -1})
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-nope")
