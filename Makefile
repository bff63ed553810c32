# Set-up is implicit: the first `make test` / `make demo` creates .venv and installs the package.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo bench clean

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

bench: $(STAMP)
	$(PY) bench/inference.py
	$(PY) bench/inference.py --dtype bfloat16
	$(PY) bench/train.py
	$(PY) bench/train.py --dtype bfloat16

clean:
	rm -rf $(VENV) build *.egg-info
