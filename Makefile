# mmntrace — see README.md.
#   make setup   install what a fresh Debian 12 machine lacks (apt + .venv); idempotent
#   make test    unit tests, then the lab tests inside 6.1 and 6.12 guests
#   make demo    record the KVM + test-module workload and print the report (demo-out/)
SHELL := /bin/bash
PY := .venv/bin/python
KERNELS ?= 6.1 6.12

.PHONY: setup test unit lab-test kmod demo clean
setup:
	@bash scripts/setup.sh

kmod: setup
	@$(MAKE) -s -C tests/kmod all

unit: setup
	$(PY) -m pytest -q -m "not lab" tests

# One boot per kernel; pytest runs inside the guest.
lab-test: setup kmod
	@mkdir -p build; rm -rf build/lab-recordings
	@set -e; for k in $(KERNELS); do \
	  echo "== lab tests on $$k"; \
	  .venv/bin/mmntrace lab --kernel $$k --memory 3G --share $(CURDIR)/build -- \
	    $(PY) -m pytest -q -p no:cacheprovider -m lab --ignore=tests/lab/test_daemon.py tests; \
	  echo "== daemon lab test on $$k (its own boot)"; \
	  .venv/bin/mmntrace lab --kernel $$k --memory 3G --share $(CURDIR)/build -- \
	    $(PY) -m pytest -q -p no:cacheprovider -m lab tests/lab/test_daemon.py; \
	done
	@echo "== notebooks, HTML report and plots on the lab recordings (host)"
	MMNTRACE_REQUIRE_LAB_RECORDINGS=1 $(PY) -m pytest -q -p no:cacheprovider tests/unit/test_lab_recordings.py

test: setup
	@mkdir -p build
	@start=$$(date +%s); $(MAKE) --no-print-directory unit && $(MAKE) --no-print-directory lab-test; \
	  rc=$$?; echo "make test: $$(( $$(date +%s) - start )) s"; exit $$rc

demo: setup kmod
	@bash scripts/demo.sh

clean:
	rm -rf build demo-out tests/kmod/build
