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
$(STAMP): requirements.txt requirements-test.txt requirements-build.txt requirements-headless.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U pip
	$(PIP) install -q -r requirements.txt -r requirements-test.txt
	# mmcv 2.1.0 has no wheel for this torch: build it (~12 min once) against the installed torch.
	$(PIP) install -q -r requirements-build.txt
	$(PIP) install -q --no-build-isolation mmcv==2.1.0
	# pip's cached wheel was built against the torch of its day: rebuilt when its ops no longer load.
	$(PY) -c "import mmcv.ops" 2>/dev/null || $(PIP) install -q --no-build-isolation --no-deps --no-cache-dir \
		--force-reinstall mmcv==2.1.0
	$(PIP) install -q --no-deps --no-build-isolation -e .
	# mmengine and mmcv require opencv-python, whose Qt build needs libGL: keep the headless one alone (as the images do).
	$(PIP) uninstall -y opencv-python
	$(PIP) install -q --no-deps --force-reinstall -r requirements-headless.txt
	touch $(STAMP)

# The whole pipeline (synth -> record -> train -> evaluate -> test) from the very WorkflowTemplate a
# cluster runs, sized to finish in about 7 minutes on 2 CPU cores (15 at most).
DEMO_IMAGES ?= 200
DEMO_EPOCHS ?= 3
# Paths under /work are the steps' volume, which `alpr run` maps to --workdir.
DEMO_PARAMS := -p synth-count=$(DEMO_IMAGES) -p epochs=$(DEMO_EPOCHS) -p img-size=320 -p batch-size=4 \
	-p run-id=demo -p dataset-name=demo -p source=/work/synth/demo -p store=file:///work/bucket

demo: setup
	$(VENV)/bin/alpr run workflows/alpr-pipeline.yaml --workdir $(WORK) $(DEMO_PARAMS)
	@echo "model:          $$(sed 's|^file://||' $(WORK)/runs/demo/eval/model-uri) (the checkpoint evaluate picked)"
	@echo "metrics, plots: $(WORK)/runs/demo/eval/"
	@echo "pictures:       $(WORK)/runs/demo/test/images/"
	@echo "tensorboard:    $(VENV)/bin/tensorboard --logdir $(WORK)/runs"
	@echo "serve it:       $(VENV)/bin/alpr serve --model $$(cat $(WORK)/runs/demo/eval/model-uri)"

# Regenerate the WorkflowTemplate YAML from the Hera modules beside it: workflows/x_y.py -> workflows/alpr-x-y.yaml,
# and the Katib Experiment from katib/experiment.py.
workflows: setup
	for module in workflows/*.py; do \
		$(VENV)/bin/hera generate yaml $$module --to workflows/alpr-$$(basename $$module .py | tr _ -).yaml; \
	done
	$(PY) katib/experiment.py --to katib/experiment.yaml
	# The Helm chart installs the very same YAML.
	rm -f charts/alpr/files/workflows/alpr-*.yaml
	cp workflows/alpr-*.yaml charts/alpr/files/workflows/

test: setup
	$(PY) -m pytest

benchmarks: setup
	$(PY) benchmarks/synth_speed.py
	$(PY) benchmarks/record_speed.py
	$(PY) benchmarks/loader_speed.py
	$(PY) benchmarks/model_speed.py
	$(PY) benchmarks/serve_speed.py

clean-demo:
	rm -rf $(WORK)
