# Everyday commands; .ci/run runs the same lint, then the tests, on a fresh machine.
# Needs the dev extra: pip install -e '.[dev]' (ruff, mypy, pytest).

LINT_PATHS = src tests benchmarks scripts conftest.py

.PHONY: lint test

# ruff: the rules in pyproject.toml ([tool.ruff]) over all the Python code; mypy: src/
# ([tool.mypy]).
lint:
	python -m ruff check $(LINT_PATHS)
	python -m mypy src

# The README's test command (everything; `python -m pytest -m "not slow"` is the fast tier).
test:
	python -m pytest
