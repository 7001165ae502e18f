# `make demo` and `make test` create .venv on first use from the pinned requirements.txt.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DATA := demo_data/shapes
DEMO_RUN := output/demo/van_b0-shapes

.PHONY: test test-fast test-clients docs demo clean-venv

$(VENV)/.installed: requirements.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

# Draw a 6-class image dataset, train VAN-B0 on it on the CPU, validate the best checkpoint.
demo: $(VENV)/.installed
	@test -d $(DEMO_DATA) || { rm -rf $(DEMO_DATA).partial && \
		$(PY) -m van_focal.cli.shapes $(DEMO_DATA).partial && mv $(DEMO_DATA).partial $(DEMO_DATA); }
	rm -rf $(DEMO_RUN)
	$(PY) train.py $(DEMO_DATA) --config configs/demo_van_b0_shapes.yaml --device cpu \
		--output $(dir $(DEMO_RUN)) --experiment $(notdir $(DEMO_RUN))
	$(PY) validate.py $(DEMO_DATA) --model van_b0 --img-size 64 --device cpu --workers 2 \
		--checkpoint $(DEMO_RUN)/model_best.pth.tar --results-file $(DEMO_RUN)/validate.json

# Everything: the docs site built strictly (a broken link or a missing page fails), then every test.
test: docs
	$(PY) -m pytest -q tests

# The tests without the ones that drive train.py / validate.py / the tools end to end (marker `scripts`).
test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not scripts" tests

# docs/other_libraries.md against the real smp, fastai and transformers (requirements-clients.txt), in their
# own environment: tests/models/test_other_libraries.py runs every block of the page (`make test` skips those
# that need them).
CLIENTS_VENV := .venv-clients
$(CLIENTS_VENV)/.installed: requirements.txt requirements-clients.txt setup.py
	$(PYTHON) -m venv $(CLIENTS_VENV)
	$(CLIENTS_VENV)/bin/python -m pip install -q -r requirements.txt -r requirements-clients.txt
	$(CLIENTS_VENV)/bin/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

test-clients: $(CLIENTS_VENV)/.installed
	$(CLIENTS_VENV)/bin/python -m pytest -q tests/models/test_other_libraries.py

docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet --site-dir output/site

clean-venv:
	rm -rf $(VENV) $(CLIENTS_VENV)
