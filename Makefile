# lienthong — make targets. Every target installs what it needs first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: help install demo test airflow mocks reset constraints

help:
	@echo "make demo         run the dossier flow once through Airflow against the stand-ins, print a summary"
	@echo "make test         install what is needed and run the whole test suite"
	@echo "make airflow      Airflow UI (standalone, SQLite, our DAGs/connections/pools) on http://127.0.0.1:8080"
	@echo "make mocks        run the stand-in peers in the foreground (lienthong mocks up)"
	@echo "make reset        delete all local state (var/)"
	@echo "make constraints  regenerate constraints.txt from the current virtual environment"

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --constraint constraints.txt --editable '.[airflow,test]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/lienthong demo

test: install
	$(PY) -m pytest

airflow: install
	$(VENV)/bin/lienthong airflow standalone

mocks: install
	$(VENV)/bin/lienthong mocks up

reset:
	rm -rf var

constraints:
	$(PY) -m pip freeze --exclude-editable | grep -v '^lienthong' > constraints.txt
