# The two set-up commands: `make demo` and `make test` (both bootstrap a fresh machine).
.PHONY: demo test lint bootstrap

bootstrap:
	@scripts/bootstrap.sh

demo: bootstrap
	.venv/bin/python -m bench.demo --duration $${DURATION:-60}

lint: bootstrap
	.venv/bin/ruff check .
	.venv/bin/mypy
	.venv/bin/hadolint Dockerfile.jetson

# pytest exits 5 when it collected no test: that is a broken suite here, not a pass.
test: lint
	@.venv/bin/python -m pytest $${PYTEST_ARGS:-}; rc=$$?; \
	 if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc
