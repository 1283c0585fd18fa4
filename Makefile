# Thin wrappers around the commands in README.md; nothing here is hidden magic.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup data site lab test test-fast test-browser exercises grade notebooks bench dry-run-full gpu-check gpu-wheels clean

# A virtual environment with cnnlib (editable) and everything the lectures and tests need.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP) data

# Debian packages the course uses: Fashion-MNIST for the medium profile (cnnlib/data.py looks in
# $$CNNLIB_DATA, then in Debian's package) and bubblewrap, the grader's per-submission sandbox
# (cnnlib/course/sandbox.py), and MathJax 2 (libjs-mathjax), which typesets the website's math offline.
# As root on a Debian-family system: install what is missing; elsewhere:
# say how to get it. The quick profile needs none of this (its digits ship inside scikit-learn), and
# without bwrap the grader still runs, with resource limits only and a warning.
data: $(STAMP)
	@missing=""; \
	$(BIN)/python -c "import sys, cnnlib.data as d; sys.exit(not d.fashion_mnist_available())" || missing="dataset-fashion-mnist"; \
	command -v bwrap >/dev/null || missing="$${missing:+$$missing }bubblewrap"; \
	[ -f /usr/share/javascript/mathjax/MathJax.js ] || missing="$${missing:+$$missing }libjs-mathjax"; \
	if [ -z "$$missing" ]; then \
	  echo "Fashion-MNIST: found; bubblewrap: found; MathJax: found"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "apt-get install $$missing"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; }; \
	else \
	  echo "Not found: $$missing. Debian/Ubuntu: sudo apt-get install $$missing"; \
	  echo "  Without Fashion-MNIST the course runs in the quick profile; with internet it downloads:"; \
	  echo "    $(BIN)/python -c \"import cnnlib; cnnlib.load('fashion-mnist')\""; \
	  echo "  Without bubblewrap the grader runs submissions under resource limits only."; \
	  echo "  Without libjs-mathjax, make site cannot typeset math (or set CNNLIB_MATHJAX to a MathJax 2 copy)."; \
	fi

# The course website in site/ (cnnlib/course/site.py): every lecture executed in the quick profile
# (the result cache makes a rebuild fast), built with Sphinx + myst-nb. make site LECTURES="08 09"
# builds only those.
LECTURES ?=
site: setup
	CNNLIB_PROFILE=quick $(BIN)/cnn-course site $(LECTURES) --out site

# Start JupyterLab with the file browser on lectures/ (cnnlib/course/lab.py: the course's
# JupyterLab defaults, and --allow-root where Jupyter needs it).
lab: setup
	$(BIN)/cnn-course lab

# Every test: unit tests, course-structure tests, and every lecture and solution notebook
# executed top to bottom in the quick profile (nbval).
# A fresh result cache, so the notebooks' times are what a new machine sees (conftest.py prints
# each notebook's cold time against its 90 s budget).
test: setup
	CNNLIB_PROFILE=quick CNNLIB_CACHE=$$(mktemp -d -t cnnlib-test-cache-XXXXXX) $(BIN)/python -m pytest --nbval-lax

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

# The prepared GPU check (bench/gpu_check.py; ≈ 8 min on one H200): fit throughput, vmap surfaces and
# every lecture's full profile shrunk to one epoch, in one table (artifacts/gpu-check.md). Uses the
# virtual environment where there is one, else python3 (the device machine: see bench/gpu_wheels.py,
# which `make gpu-wheels` runs to carry the Jupyter wheels and Fashion-MNIST there in .gpu/).
CHECK_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))
gpu-check:
	$(CHECK_PYTHON) bench/gpu_check.py

gpu-wheels: $(STAMP)
	$(BIN)/python bench/gpu_wheels.py

clean:
	rm -rf build dist *.egg-info .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
