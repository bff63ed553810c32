# Set-up is implicit: the first `make test` / `make demo` creates .venv and installs the package.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo serve bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

# Generate the shapes data, build stand-in weights, pretrain, LoRA-finetune, merge, evaluate and
# chat; results in outputs/demo (metrics.json, losses.png).
demo: $(STAMP)
	$(PY) -m bunny.demo --output-dir outputs/demo

# Controller + one model worker on the demo's checkpoint (trained first if absent) + the web page;
# prints the page's URL. SERVE_FLAGS="--device cuda" serves from a GPU.
DEMO_CHECKPOINT := outputs/demo/checkpoints/bunny-phi-2
SERVE_FLAGS ?=
serve: $(STAMP)
	test -f $(DEMO_CHECKPOINT)/config.json || $(MAKE) demo
	$(PY) -m bunny.serve.launch --model-path $(DEMO_CHECKPOINT) --model-type phi-2 --device cpu $(SERVE_FLAGS)

bench: $(STAMP)
	$(PY) bench/inference.py
	$(PY) bench/inference.py --dtype bfloat16
	$(PY) bench/train.py
	$(PY) bench/train.py --dtype bfloat16
	$(PY) bench/eval.py

clean:
	rm -rf $(VENV) build *.egg-info
