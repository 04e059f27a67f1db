"""OpenAI's Files API through the official client: upload, list, retrieve, content, delete,
and a malformed training file refused with its line number."""

import json

import openai
import pytest

EXAMPLES = [
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    {"messages": [{"role": "system", "content": "terse"}, {"role": "user", "content": "2+2"},
                  {"role": "assistant", "content": "4", "weight": 1}]},
]
TRAIN = "".join(json.dumps(e) + "\n" for e in EXAMPLES).encode()


def test_file_round_trip(client):
    f = client.files.create(file=("train.jsonl", TRAIN), purpose="fine-tune")
    assert f.id.startswith("file-")
    assert (f.object, f.bytes, f.filename, f.purpose, f.status) == \
        ("file", len(TRAIN), "train.jsonl", "fine-tune", "processed")

    # The session's server is shared: other tests may have uploaded files too.
    assert f.id in [x.id for x in client.files.list()]
    assert f.id in [x.id for x in client.files.list(purpose="fine-tune")]
    assert f.id not in [x.id for x in client.files.list(purpose="batch")]
    assert client.files.retrieve(f.id).model_dump() == f.model_dump()
    assert client.files.content(f.id).read() == TRAIN

    gone = client.files.delete(f.id)
    assert (gone.id, gone.deleted) == (f.id, True)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)
    assert f.id not in [x.id for x in client.files.list()]


def test_list_pages(client):
    ids = [client.files.create(file=(f"f{i}.jsonl", TRAIN), purpose="fine-tune").id for i in range(3)]
    page = client.files.list(limit=2, order="asc", purpose="fine-tune")
    # Auto-pagination follows `after` through every page.
    listed = [x.id for x in page]
    assert listed.index(ids[0]) < listed.index(ids[1]) < listed.index(ids[2])
    for i in ids:
        client.files.delete(i)


def test_malformed_training_file_names_the_line(client):
    bad = TRAIN + b'{"messages": [{"role": "user", "content": "no answer"}]}\n'
    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=("bad.jsonl", bad), purpose="fine-tune")
    assert "line 3" in str(e.value)
    assert e.value.body["param"] == "file"
    assert "bad.jsonl" not in [x.filename for x in client.files.list()]


def test_bad_purpose(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=("train.jsonl", TRAIN), purpose="training")
    assert e.value.body["param"] == "purpose"


def test_a_line_over_the_line_cap_is_refused_by_number(client):
    # MAX_LINE_BYTES is 1 MiB: one example may not be longer.
    long = json.dumps({"messages": [{"role": "user", "content": "x" * (1 << 20)},
                                    {"role": "assistant", "content": "y"}]}).encode()
    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=("long.jsonl", TRAIN + long + b"\n"), purpose="fine-tune")
    assert "line 3" in str(e.value) and "longer than 1048576 bytes" in str(e.value)
    assert e.value.body["param"] == "file"
    assert "long.jsonl" not in [x.filename for x in client.files.list()]


def test_a_multi_megabyte_download_is_the_upload(client):
    blob = bytes(range(256)) * (12 << 10) + b"tail"  # 3 MiB and a bit, not text
    f = client.files.create(file=("blob.bin", blob), purpose="user_data")
    assert client.files.content(f.id).read() == blob
    client.files.delete(f.id)
