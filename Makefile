# The two set-up commands: `make demo` and `make test` (both bootstrap a fresh machine).
.PHONY: demo test unit lint bootstrap venv-ultra

bootstrap:
	@scripts/bootstrap.sh

demo: bootstrap
	.venv/bin/python -m daemon.cli --log-level warning bench demo --duration $${DURATION:-60}

lint: bootstrap
	.venv/bin/ruff check .
	.venv/bin/mypy
	.venv/bin/hadolint Dockerfile.jetson

# pytest exits 5 when it collected no test: that is a broken suite here, not a pass.
define pytest
@.venv/bin/python -m pytest $(1) $${PYTEST_ARGS:-}; rc=$$?; \
 if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc
endef

test: lint
	$(call pytest,)

# tests/unit/ only: the quick loop while editing. No lint here: strict mypy over the whole
# tree from a cold cache (a fresh checkout, as in CI) alone takes longer than these tests;
# `make lint` runs it on its own, and `make test` before the whole suite.
unit: bootstrap
	$(call pytest,tests/unit)

# The Ultralytics peer for `edgewatch bench e2e --baseline ultralytics` and the tracker
# reference (tests/reference/generate_tracks.py), in its own interpreter so the daemon's venv
# never gets PyTorch. The torch/torchvision pair is one that imports together from this
# machine kind's local wheels: PyPI's torchvision fails beside the CPU-only torch 2.13.0.
ULTRA_TORCH_x86_64 := torch==2.14.1 torchvision==0.29.1
ULTRA_TORCH_aarch64 := torch==2.9.1 torchvision==0.24.1
venv-ultra: .venv-ultra/.installed

.venv-ultra/.installed:
	@test -n "$(ULTRA_TORCH_$(shell uname -m))" || \
	 { echo "venv-ultra: no torch/torchvision pair known for $$(uname -m)" >&2; exit 1; }
	python3 -m venv .venv-ultra
	.venv-ultra/bin/python -m pip install -q --disable-pip-version-check $(ULTRA_TORCH_$(shell uname -m))
	.venv-ultra/bin/python -m pip install -q --disable-pip-version-check ultralytics lap paho-mqtt psutil
	.venv-ultra/bin/python -c "from ultralytics.trackers.byte_tracker import BYTETracker; import torchvision.ops"
	touch $@
