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

# Until the end-to-end demo lands: chat with a tiny reference checkpoint about a bundled picture.
demo: $(STAMP)
	cd tests/fixtures/reference && printf 'What is shown in this picture?\n' | \
	  ../../../$(PY) -m bunny.serve.cli --model-path checkpoints/bunny-phi-2-siglip-full \
	  --model-type phi-2 --image-file ../../../images/shapes.png --device cpu --temperature 0 --max-new-tokens 16

bench: $(STAMP)
	$(PY) bench/inference.py
	$(PY) bench/inference.py --dtype bfloat16
	$(PY) bench/train.py
	$(PY) bench/train.py --dtype bfloat16

clean:
	rm -rf $(VENV) build *.egg-info
