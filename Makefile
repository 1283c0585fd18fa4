# Thin wrappers around the commands in README.md; nothing here is hidden magic.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup lab test test-fast test-browser exercises grade notebooks bench dry-run-full clean

# A virtual environment with cnnlib (editable) and everything the lectures and tests need.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# Start JupyterLab with the file browser on lectures/ (cnnlib/course/lab.py: the course's
# JupyterLab defaults, and --allow-root where Jupyter needs it).
lab: $(STAMP)
	$(BIN)/cnn-course lab

# Every test: unit tests, course-structure tests, and every lecture and solution notebook
# executed top to bottom in the quick profile (nbval).
test: $(STAMP)
	CNNLIB_PROFILE=quick $(BIN)/python -m pytest --nbval-lax

# Unit and structure tests only (no notebook execution).
test-fast: $(STAMP)
	CNNLIB_PROFILE=quick $(BIN)/python -m pytest tests

# JupyterLab driven in headless Chromium (also part of `make test`); needs Debian's chromium,
# which the tests install with apt-get when run as root.
test-browser: $(STAMP)
	CNNLIB_PROFILE=quick $(BIN)/python -m pytest -m browser tests/test_browser.py

exercises: $(STAMP)
	$(BIN)/cnn-course exercises

# make grade SUBMISSIONS=submissions/  → grades.csv and grades.md
SUBMISSIONS ?= submissions
grade: $(STAMP)
	$(BIN)/cnn-course grade $(SUBMISSIONS) --out grades.csv

# Strip outputs from every notebook (keeps the outputs nbval checks).
notebooks: $(STAMP)
	$(BIN)/cnn-course clean

bench: $(STAMP)
	$(BIN)/python bench/train.py

# Every lecture's full-profile branch on this CPU, on a fake CIFAR-10 (numbers meaningless).
dry-run-full: $(STAMP)
	$(BIN)/python bench/full_profile_dry_run.py

clean:
	rm -rf build dist *.egg-info .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
