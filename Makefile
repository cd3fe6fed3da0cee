# make demo: set up .venv if needed, then run the pipeline on the embedded defaults.
# make test: set up .venv if needed, then run the tests.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.alpr-installed
WORK ?= work

.PHONY: setup demo test benchmarks workflows clean-demo

setup: $(STAMP)

# Idempotent: reruns only when the requirements change; pip's cache holds the mmcv wheel after the first build.
$(STAMP): requirements.txt requirements-test.txt requirements-build.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U pip
	$(PIP) install -q -r requirements.txt -r requirements-test.txt
	# mmcv 2.1.0 has no wheel for this torch: build it (~12 min once) against the installed torch.
	$(PIP) install -q -r requirements-build.txt
	$(PIP) install -q --no-build-isolation mmcv==2.1.0
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: setup
	$(VENV)/bin/alpr synth --out $(WORK)/synth/demo-1 --count 200 --seed 0 --width 640 --height 480
	$(VENV)/bin/alpr record --source $(WORK)/synth/demo-1 --workdir $(WORK) --dataset demo --version 1 \
		--store file://$(abspath $(WORK))/bucket

# Regenerate the WorkflowTemplate YAML from the Hera modules beside it: workflows/x_y.py -> workflows/alpr-x-y.yaml.
workflows: setup
	for module in workflows/*.py; do \
		$(VENV)/bin/hera generate yaml $$module --to workflows/alpr-$$(basename $$module .py | tr _ -).yaml; \
	done

test: setup
	$(PY) -m pytest

benchmarks: setup
	$(PY) benchmarks/synth_speed.py
	$(PY) benchmarks/record_speed.py

clean-demo:
	rm -rf $(WORK)
