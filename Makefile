# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
OUT    ?= out

.PHONY: env test demo bench stress clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, by the exact pin of the locally available CPU wheel: an unpinned resolve
	# would pull a multi-GB CUDA build. pyproject's own requirement is a range it satisfies.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

env: $(STAMP)

test: env
	$(PY) -m pytest -q

demo: env
	$(PY) -m cli train quick-grok --out $(OUT)/demo.zarr --overwrite
	$(PY) -m cli analyze $(OUT)/demo.zarr
	$(PY) -m cli phases $(OUT)/demo.zarr
	$(PY) -m cli plot $(OUT)/demo.zarr -o $(OUT)/demo.png
	@echo "figure written to $(OUT)/demo.png"

bench: env
	$(PY) -m benchmarks

# SIGKILL 100 writers and 30 analyses at random moments (about 15 minutes); not in `make test`
stress: env
	$(PY) tests/store/_stress.py --trials 100

clean:
	rm -rf $(VENV) $(OUT) *.egg-info
