# Every target calls the one CLI; override any variable: make train DATA=my_data PATIENT=grandpa
PYTHON     ?= python3
VENV       ?= .venv
BIN        := $(VENV)/bin
EXTRAS     ?= dev
DATA       ?= resonance/demo_data/take1
EVAL_DATA  ?=
PATIENT    ?= demo
# BASE_MODEL empty: train uses openai/whisper-small, export reads the adapter's train_config.json
BASE_MODEL ?=
ADAPTER    ?= adapters/$(PATIENT)
BUNDLE     ?= bundles/$(PATIENT)
QUANTIZE   ?= none
CONFIG     ?= pc-cpu
MODELS     ?= bundles
TRAIN_ARGS ?=
SERVE_ARGS ?=

.PHONY: install train export serve models-folder test demo lint clean jetson-check gpu-check

STAMP      := $(VENV)/.installed-$(EXTRAS)

install: $(STAMP)   ## create .venv and install everything (train + export + runtime + tests)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	touch $@

train: $(STAMP)     ## fine-tune Whisper's encoder for one patient (TRAIN_ARGS="--finetune lora --adapt both": LoRA)
	$(BIN)/resonance train --data $(DATA) $(if $(EVAL_DATA),--eval-data $(EVAL_DATA)) --out $(ADAPTER) $(if $(BASE_MODEL),--base-model $(BASE_MODEL)) $(TRAIN_ARGS)

export: $(STAMP)    ## merge + export the adapter to an ONNX bundle for the device
	$(BIN)/resonance export $(if $(BASE_MODEL),--base-model $(BASE_MODEL)) --adapter $(ADAPTER) --out $(BUNDLE) --quantize $(QUANTIZE)

serve: models-folder $(STAMP)     ## serve every bundle in $(MODELS) on the LAN (https), e.g. SERVE_ARGS="--auth --collect corrections"
	$(BIN)/resonance serve --config $(CONFIG) --models $(MODELS) $(SERVE_ARGS)

# Before the install: a fresh clone has no bundles yet, and the answer should not wait for pip.
models-folder:
	@test -d "$(MODELS)" || { echo "make serve: no models folder '$(MODELS)'. Run 'make train' and 'make export' first (they write $(BUNDLE)), or name the folder that holds one bundle per patient: make serve MODELS=path/to/bundles" >&2; exit 2; }

demo: $(STAMP)      ## the whole chain on the built-in clips, offline
	$(BIN)/resonance demo

test: $(STAMP)      ## the test suite (what CI runs), on 2 workers; one test file stays on one worker
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

gpu-check: $(STAMP)      ## on a CUDA machine: train, export fp16, run and time every GPU path (else one line)
	$(BIN)/resonance gpu-check

jetson-check: $(STAMP)   ## can a Jetson install the runtime? aarch64 wheels for JetPack 5 (3.8) and 6 (3.10)
	$(BIN)/python tests/jetson_wheels.py

lint:
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf build *.egg-info .pytest_cache .ruff_cache
