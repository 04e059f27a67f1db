#!/usr/bin/env python3
"""Records llama.cpp's greedy output on flint's quantized GGUF files, for tests/quant_fidelity.rs.

For each quantization type the GGUF is made exactly as the test makes it again:

- q4_1: the shipped default-model file, $FLINT_HOME/gguf/SmolLM2-135M-Instruct.Q4_1.gguf, as it is;
- the others: `flint quantize $FLINT_HOME/models/smollm2-135m-instruct OUT --type T` (the f32
  Hugging Face conversion of that file; the quantizer is deterministic).

Each file is served by llama-server (-t 2 -np 1 -c 2048); every fixture prompt is tokenized by
its /tokenize (special tokens parsed, no BOS added: the SmolLM2 GGUF adds none) and completed
greedily by /completion with the token ids as the prompt, n_probs=2 and cache_prompt=false. The
top-2 log-probabilities are computed before sampling, over the whole vocabulary, so their
difference is the logit margin between llama.cpp's two best tokens.

Output: tests/fixtures/quant/<type>.json with
  {type, source, sha256, llama_cpp_version, n_predict,
   prompts: [{name, text, prompt_ids, generated_ids, top2: [[id1, lp1, id2, lp2], ...]}]}.

Python 3 standard library only. Usage (from the repository root, after
`cargo build --release -p flint-server` and `make model`):

    scripts/quant-fidelity.py [--types q4_1,q8_0,...] [--llama-server PATH] [--flint PATH]

llama-server is $LLAMA_SERVER, else the one llama-peer builds under
~/.cache/flint-peer/llama_cpp_python-*/vendor/llama.cpp/build/bin/, else `llama-server` on PATH.
"""

import argparse
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

TYPES = ["q4_1", "q8_0", "q4_0", "q5_0", "q4_k_m"]
N_PREDICT = 32

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# Mixed kinds of text, 10-40 tokens each. Names are how the test reports them.
PROMPTS = [
    ("plain", "The history of the Roman Empire began when"),
    (
        "chat",
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
        "<|im_start|>user\nGive me three tips for staying healthy.<|im_end|>\n"
        "<|im_start|>assistant\n",
    ),
    ("code", 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n'),
    ("list", "Shopping list:\n1. Milk\n2. Eggs\n3."),
    ("numbers", "The first prime numbers are 2, 3, 5, 7, 11,"),
    ("science", "Photosynthesis is the process by which green plants"),
]


def flint_home():
    return os.environ.get("FLINT_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "flint")


def find_llama_server(arg):
    if arg:
        return arg
    if os.environ.get("LLAMA_SERVER"):
        return os.environ["LLAMA_SERVER"]
    pattern = os.path.join(
        os.path.expanduser("~"), ".cache", "flint-peer", "llama_cpp_python-*", "vendor", "llama.cpp", "build", "bin", "llama-server"
    )
    found = sorted(glob.glob(pattern))
    if found:
        return found[-1]
    path = shutil.which("llama-server")
    if path:
        return path
    sys.exit("error: no llama-server (set LLAMA_SERVER or run /work/shared/bench/llama-peer.sh)")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def post(port, path, body):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.load(r)


def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
        return json.load(r)


class LlamaServer:
    def __init__(self, binary, model, port, log):
        self.port = port
        self.log = open(log, "w")
        self.proc = subprocess.Popen(
            [binary, "-m", model, "-t", "2", "-np", "1", "-c", "2048", "--port", str(port), "--host", "127.0.0.1"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 120
        while True:
            if self.proc.poll() is not None:
                sys.exit(f"error: llama-server exited with {self.proc.returncode}; see {log}")
            try:
                if get(port, "/health").get("status") == "ok":
                    return
            except (urllib.error.URLError, ConnectionError, OSError, ValueError):
                pass
            if time.time() > deadline:
                self.close()
                sys.exit(f"error: llama-server did not become ready; see {log}")
            time.sleep(0.3)

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def complete(port, text):
    ids = post(port, "/tokenize", {"content": text, "add_special": True, "parse_special": True})["tokens"]
    out = post(
        port,
        "/completion",
        {
            "prompt": ids,
            "n_predict": N_PREDICT,
            "temperature": 0,
            "top_k": 1,
            "samplers": ["top_k"],
            "n_probs": 2,
            "cache_prompt": False,
            "return_tokens": True,
        },
    )
    gen = out["tokens"]
    probs = out["completion_probabilities"]
    top2 = []
    for i, p in enumerate(probs):
        (a, b) = p["top_logprobs"][:2]
        top2.append([a["id"], round(a["logprob"], 5), b["id"], round(b["logprob"], 5)])
    # An end-of-generation token stops llama-server; it is the last generated token then.
    if len(gen) < len(top2):
        gen = gen + [p["id"] for p in probs[len(gen):]]
    assert len(gen) == len(top2), (len(gen), len(top2))
    for i, (g, t) in enumerate(zip(gen, top2)):
        # Greedy: the sampled token is the most likely one (ties aside).
        assert g == t[0] or t[1] == t[3], f"position {i}: sampled {g}, top-1 {t}"
    return ids, gen, top2


def make_gguf(qtype, flint, tmp):
    home = flint_home()
    if qtype == "q4_1":
        path = os.path.join(home, "gguf", "SmolLM2-135M-Instruct.Q4_1.gguf")
        return path, "the shipped default-model file $FLINT_HOME/gguf/SmolLM2-135M-Instruct.Q4_1.gguf, unchanged"
    src = os.path.join(home, "models", "smollm2-135m-instruct")
    out = os.path.join(tmp, f"{qtype}.gguf")
    subprocess.run([flint, "quantize", src, out, "--type", qtype, "--quiet"], check=True)
    return out, f"flint quantize $FLINT_HOME/models/smollm2-135m-instruct OUT --type {qtype}"


def write_fixture(path, fixture):
    # One line per prompt field and per generated position: small and diffable.
    lines = ["{"]
    for k in ["type", "source", "sha256", "llama_cpp_version", "n_predict"]:
        lines.append(f"  {json.dumps(k)}: {json.dumps(fixture[k])},")
    lines.append('  "prompts": [')
    for i, p in enumerate(fixture["prompts"]):
        lines.append("    {")
        for k in ["name", "text", "prompt_ids", "generated_ids"]:
            lines.append(f"      {json.dumps(k)}: {json.dumps(p[k])},")
        lines.append('      "top2": [')
        rows = [f"        {json.dumps(t)}" for t in p["top2"]]
        lines.append(",\n".join(rows))
        lines.append("      ]")
        lines.append("    }" + ("," if i + 1 < len(fixture["prompts"]) else ""))
    lines.append("  ]")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    json.loads(text)
    with open(path, "w") as f:
        f.write(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--flint", default=os.environ.get("FLINT_BIN", "target/release/flint"))
    ap.add_argument("--llama-server")
    ap.add_argument("--port", type=int, default=18473)
    ap.add_argument("--out-dir", default=os.path.join("tests", "fixtures", "quant"))
    args = ap.parse_args()

    server = find_llama_server(args.llama_server)
    version = subprocess.run([server, "--version"], capture_output=True, text=True).stderr.strip().splitlines()
    version = next((l for l in version if l.startswith("version:")), " ".join(version)).removeprefix("version: ")
    os.makedirs(args.out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="quant-fidelity-") as tmp:
        for qtype in args.types.split(","):
            gguf, source = make_gguf(qtype, args.flint, tmp)
            digest = sha256(gguf)
            log = os.path.join(tmp, f"llama-server-{qtype}.log")
            srv = LlamaServer(server, gguf, args.port, log)
            try:
                build = get(args.port, "/props").get("build_info", "")
                prompts = []
                for name, text in PROMPTS:
                    ids, gen, top2 = complete(args.port, text)
                    prompts.append({"name": name, "text": text, "prompt_ids": ids, "generated_ids": gen, "top2": top2})
            finally:
                srv.close()
            fixture = {
                "type": qtype,
                "source": source,
                "sha256": digest,
                # `llama-server --version`, else /props' build_info.
                "llama_cpp_version": version or build,
                "n_predict": N_PREDICT,
                "prompts": prompts,
            }
            out = os.path.join(args.out_dir, f"{qtype}.json")
            write_fixture(out, fixture)
            margins = [t[1] - t[3] for p in prompts for t in p["top2"]]
            print(
                f"{qtype}: sha256 {digest[:12]}, {len(prompts)} prompts, {len(margins)} positions, "
                f"{sum(m < 0.1 for m in margins)} near-ties (margin < 0.1) -> {out}",
                file=sys.stderr,
            )
            if qtype != "q4_1":
                os.remove(gguf)


if __name__ == "__main__":
    main()
