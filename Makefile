# mmntrace — see README.md.
#   make setup   install what a fresh Debian 12 machine lacks (apt + .venv, and the arm64
#                lab's root file system); idempotent
#   make test    unit tests, then the lab tests inside 6.12, 6.1, 6.12 PREEMPT_RT and arm64 6.12 guests
#   make demo    record the KVM + test-module workload and print the report (demo-out/)
SHELL := /bin/bash
PY := .venv/bin/python
KERNELS ?= 6.1 6.12

.PHONY: setup setup-host test unit boot-test lab-test lab-recordings-check lab-test-all lab-test-arm64 arm64-root kmod demo clean bench bench-tiny bench-ab wheel

# make bench: the tracer against its peers in the lab (both kernels) plus the
# host-side decode and report benchmarks -> bench/results.json, BENCHMARKS.md.
# BENCH_SIZE=tiny is the end-to-end check `make test` runs (into build/).
BENCH_SIZE ?= full
BENCH_DIR = build/bench/$(BENCH_SIZE)
# one kernel's lab run: at full size ten tools, five runs each, the streaming sweep
# and the ambient runs take about 40 minutes (the lab's default of 20 would kill it);
# the smaller sizes keep that default (`make test`'s tiny run: a hang ends there)
ifeq ($(BENCH_SIZE),full)
BENCH_TIMEOUT ?= 5400
BENCH_RESULTS ?= bench/results.json
BENCH_MD ?= BENCHMARKS.md
else
BENCH_TIMEOUT ?= 1200
BENCH_RESULTS ?= $(BENCH_DIR)/results.json
BENCH_MD ?= $(BENCH_DIR)/BENCHMARKS.md
endif
# setup-host: this machine's packages, kernels and .venv (what every other target needs);
# setup: that and the arm64 lab (arm64-root, below)
setup: setup-host arm64-root

setup-host:
	@bash scripts/setup.sh

kmod: setup-host
	@$(MAKE) -s -C tests/kmod all

unit: setup-host build/bench/ambient_bench
	$(PY) -m pytest -q -m "not lab and not boot" tests

# One boot per kernel; pytest runs inside the guest. A test that hangs fails
# alone after LAB_TEST_TIMEOUT seconds (with its stack) instead of the whole VM.
# If the emulator loses the guest, scripts/lab_suite.py resumes once in a fresh
# one without the tests that had finished (their failures still count).
LAB_TEST_TIMEOUT ?= 600
# Which lab tests each kernel runs (scripts/lab_suite.py KERNEL:SCOPE, pytest
# markers in pyproject.toml): 6.12 all of them but the `second_kernel` ones; 6.1
# those whose behaviour depends on the kernel (not `one_kernel`), `second_kernel`
# included; PREEMPT_RT 6.12 the lock-context and sleeping-rule ones
# (`lock_context`); arm64 6.12 (QEMU emulating it: the slowest guest) the `arm64`
# ones, the seed's case; none of the `matrix_all` ones. 6.12 (the longest, about
# 2,000 s) beside 6.1 then PREEMPT_RT (about 1,100 s each); arm64 (about 600 s)
# in whichever guest is free first. `make lab-test-all`: every test on every x86
# kernel, and arm64-full (`make lab-test-arm64`'s) on arm64.
LAB_MATRIX ?= 6.12:main 6.1:kernel 6.12-rt:context 6.12-arm64:arm64
# The suites run side by side, LAB_JOBS guests at once (single-threaded TCG:
# one host CPU per guest; lines led by their kernel). LAB_JOBS=1: one after the other.
LAB_JOBS ?= 2
# The wheel, installed non-editable into build/wheel-venv the way the README
# tells a production user: tests/lab/test_install.py records from it in the lab.
wheel: setup-host
	@bash scripts/wheel-venv.sh build/dist build/wheel-venv

# The lab itself (host side, real boots): guests lost before the command are
# booted again, deaths after it are not, no VM outlives `mmntrace lab`.
boot-test: setup-host
	@echo "== the lab itself: guests lost before the command are booted again (host, real boots)"
	$(PY) -m pytest -q -p no:cacheprovider -m boot tests/boot

# LAB_BOOT_TESTS=0: without boot-test (make test runs it beside the unit tests)
LAB_BOOT_TESTS ?= 1
# An arm64 suite's root file system (arm64-root) is made beside the first x86
# suites, which do not wait for it (lab_suite.py --prepare); the arm64 suite does.
LAB_PREPARE = $(foreach s,$(LAB_MATRIX),$(if $(findstring arm64,$(s)),\
  --prepare '$(firstword $(subst :, ,$(s)))=$(MAKE) --no-print-directory arm64-root'))
lab-test: setup-host kmod build/bench/notifier_bench wheel
	@mkdir -p build; rm -rf build/lab-recordings build/lab-recordings-installed
	$(if $(filter 1,$(LAB_BOOT_TESTS)),@$(MAKE) --no-print-directory boot-test)
	@echo "== lab tests: $(LAB_MATRIX), $(LAB_JOBS) guest(s) at once"
	$(PY) scripts/lab_suite.py $(LAB_MATRIX) --timeout $(LAB_TEST_TIMEOUT) --jobs $(LAB_JOBS) $(LAB_PREPARE)
	$(if $(filter 1,$(LAB_RECORDINGS_CHECK)),@$(MAKE) --no-print-directory lab-recordings-check)

# LAB_RECORDINGS_CHECK=0: the guests only (make test checks the recordings beside bench-tiny)
LAB_RECORDINGS_CHECK ?= 1
lab-recordings-check: setup-host
	@echo "== notebooks, HTML report and plots on the lab recordings, by this checkout and by the installed wheel (host)"
	MMNTRACE_REQUIRE_LAB_RECORDINGS=1 $(PY) -m pytest -q -p no:cacheprovider tests/unit/test_lab_recordings.py \
	  tests/unit/test_installed.py

# The arm64 lab: a Debian arm64 root file system with the 6.12 arm64 kernel
# (build/arm64: about 6 minutes and 1.4 GB), booted under qemu-system-aarch64.
arm64-root: setup-host
	@nice -n 10 bash scripts/arm64_root.sh

# The arm64 lab's tests alone (markers arm64 and arm64_full): the seed's
# permission-upgrade path, the module's ground truth, sleeps in a secondary-TLB
# callback, the daemon's windows and a recording for the notebooks, on arm64.
lab-test-arm64: arm64-root
	$(PY) scripts/lab_suite.py 6.12-arm64:arm64-full --timeout $(LAB_TEST_TIMEOUT)
	@echo "== notebooks, HTML report and plots on the lab recordings (host)"
	MMNTRACE_REQUIRE_LAB_RECORDINGS=1 $(PY) -m pytest -q -p no:cacheprovider tests/unit/test_lab_recordings.py

lab-test-all:
	@$(MAKE) --no-print-directory lab-test LAB_MATRIX="6.12:all 6.1:all 6.12-rt:all 6.12-arm64:arm64-full"

# The unit tests and the lab's boot tests (one guest) side by side, then the lab
# tests (the arm64 lab's root, about 6 minutes of downloads and qemu-user at a
# lower priority, made beside their first guests: it held the lab tests back 3.5
# minutes in CI when it was made beside the unit tests); then bench-tiny (one
# guest: one host CPU) beside the host's check of the lab recordings (the other).
test: setup-host
	@mkdir -p build
	@start=$$(date +%s); $(MAKE) --no-print-directory -j2 unit boot-test \
	  && $(MAKE) --no-print-directory lab-test LAB_BOOT_TESTS=0 LAB_RECORDINGS_CHECK=0 \
	  && $(MAKE) --no-print-directory -j2 lab-recordings-check bench-tiny; \
	  rc=$$?; echo "make test: $$(( $$(date +%s) - start )) s"; exit $$rc

build/bench/notifier_bench: bench/notifier_bench.c tests/kmod/mmnt_test_uapi.h
	@mkdir -p build/bench
	cc -O2 -Wall -o $@ bench/notifier_bench.c

build/bench/ambient_bench: bench/ambient_bench.c
	@mkdir -p build/bench
	cc -O2 -Wall -o $@ bench/ambient_bench.c

bench: setup-host kmod build/bench/notifier_bench build/bench/ambient_bench
	@rm -rf $(BENCH_DIR); mkdir -p $(BENCH_DIR)
	@echo "== host: decode throughput, then report over a large recording"
	$(PY) bench/decode_bench.py --json-out $(BENCH_DIR)/decode.json \
	  $(if $(filter tiny,$(BENCH_SIZE)),--events 200000 --naive-events 20000,) || test -s $(BENCH_DIR)/decode.json
	$(PY) bench/report_bench.py --json-out $(BENCH_DIR)/report.json --dir build/bench/report-rec \
	  $(if $(filter tiny,$(BENCH_SIZE)),--events 100000 --segments 4 --violations 20 --formats json,) || test -s $(BENCH_DIR)/report.json
	@set -e; for k in $(KERNELS); do \
	  echo "== lab benchmark on $$k ($(BENCH_SIZE))"; \
	  .venv/bin/mmntrace lab --kernel $$k --memory 3G --timeout $(BENCH_TIMEOUT) --share $(CURDIR)/build -- \
	    $(PY) bench/lab_bench.py --size $(BENCH_SIZE) --out $(CURDIR)/$(BENCH_DIR)/lab-$$k.json; \
	done
	$(PY) bench/summarize.py $(BENCH_DIR) --results $(BENCH_RESULTS) --markdown $(BENCH_MD)

bench-tiny:
	@$(MAKE) --no-print-directory bench BENCH_SIZE=tiny KERNELS="$(BENCH_TINY_KERNELS)"
BENCH_TINY_KERNELS ?= 6.12

# make bench-ab AB_BASE=REV [AB_KERNEL=6.12] [AB_ARGS="--aggregate"]: this checkout's
# BPF programs against REV's, both recorders attached at once in one guest, so that
# the emulated host's noise hits both alike (bench/ab_bpf.py) -> build/ab.json
AB_BASE ?= HEAD
AB_KERNEL ?= 6.12
AB_ARGS ?=
bench-ab: setup-host kmod build/bench/notifier_bench
	@rm -rf build/ab-base; git worktree prune
	@git worktree add --detach build/ab-base $(AB_BASE) >/dev/null 2>&1 || \
	  { echo "bench-ab: cannot check out AB_BASE=$(AB_BASE)" >&2; exit 2; }
	.venv/bin/mmntrace lab --kernel $(AB_KERNEL) --memory 3G --share $(CURDIR)/build -- \
	  $(PY) bench/ab_bpf.py --a $(CURDIR)/build/ab-base --b $(CURDIR) --out $(CURDIR)/build/ab.json -- $(AB_ARGS); \
	  rc=$$?; git worktree remove --force build/ab-base; exit $$rc

demo: setup-host kmod
	@bash scripts/demo.sh

clean:
	rm -rf build demo-out tests/kmod/build
