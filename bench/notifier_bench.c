// SPDX-License-Identifier: GPL-2.0
/*
 * notifier_bench: a notifier-heavy microbenchmark (issue 6).
 *
 * Subscribes KVM (KVM_CREATE_VM plus a memory slot over the region) and the
 * test module (/dev/mmnt_test, MMNT_IOC_REGISTER) to this process's mm, then
 * runs a fixed number of rounds over PAGES anonymous pages:
 *
 *   read every page (maps the zero page), write every page (COW: CLEAR
 *   invalidation + secondary-TLB flush), mprotect(PROT_READ) then back to
 *   PROT_READ|PROT_WRITE (PROTECTION_VMA invalidations), madvise(DONTNEED)
 *   (UNMAP invalidation).
 *
 * One operation = one page COW-written, one mprotect or one madvise call, so
 * a round is PAGES + 3 operations. It prints one JSON line: operations,
 * seconds (CLOCK_MONOTONIC around the rounds only), ops/s, and the number of
 * notifier calls the test module counted over the rounds (every callback it
 * received: start, end, secondary TLB, and change_pte where the kernel still
 * has it; one per hook invocation on this mm), so that a tracer's cost can be
 * given per hook call.
 *
 *   notifier_bench ROUNDS PAGES [--no-kvm] [--no-module] [--go-file PATH]
 *
 * --go-file PATH: once subscribed, create PATH.subscribed and wait for PATH to
 * exist before the rounds (tests wait for a tracer to attach the callbacks).
 * The module subscription is dropped (MMNT_IOC_UNREGISTER: one release
 * callback) before exit.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "../tests/kmod/mmnt_test_uapi.h"

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
	fprintf(stderr, "notifier_bench: %s: %s\n", what, strerror(errno));
	exit(2);
}

static int counts(int fd, struct mmnt_test_counts *c)
{
	return fd < 0 ? 0 : ioctl(fd, MMNT_IOC_COUNTS, c);
}

int main(int argc, char **argv)
{
	long rounds, pages, psz = sysconf(_SC_PAGESIZE);
	int use_kvm = 1, use_mod = 1, kvm = -1, vm = -1, mod = -1;
	const char *go = NULL;
	long round_us = 0;		/* --round-us: pace the rounds (sustained-rate sweeps) */
	struct mmnt_test_counts c0 = {0}, c1 = {0};
	volatile unsigned char sink = 0;

	if (argc < 3) {
		fprintf(stderr, "usage: notifier_bench ROUNDS PAGES [--no-kvm] [--no-module] [--go-file PATH] "
			"[--round-us N]\n");
		return 2;
	}
	rounds = atol(argv[1]);
	pages = atol(argv[2]);
	for (int i = 3; i < argc; i++) {
		if (!strcmp(argv[i], "--no-kvm"))
			use_kvm = 0;
		else if (!strcmp(argv[i], "--no-module"))
			use_mod = 0;
		else if (!strcmp(argv[i], "--go-file") && i + 1 < argc)
			go = argv[++i];
		else if (!strcmp(argv[i], "--round-us") && i + 1 < argc)
			round_us = atol(argv[++i]);
	}
	if (rounds <= 0 || pages <= 0) {
		fprintf(stderr, "notifier_bench: ROUNDS and PAGES must be positive\n");
		return 2;
	}
	size_t len = pages * psz;
	unsigned char *buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED)
		die("mmap");
	madvise(buf, len, MADV_NOHUGEPAGE);
	if (use_kvm) {
		struct kvm_userspace_memory_region r = {
			.slot = 0, .guest_phys_addr = 0, .memory_size = len,
			.userspace_addr = (uintptr_t)buf,
		};
		kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
		if (kvm < 0)
			die("/dev/kvm");
		vm = ioctl(kvm, KVM_CREATE_VM, 0);
		if (vm < 0)
			die("KVM_CREATE_VM");
		if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r) < 0)
			die("KVM_SET_USER_MEMORY_REGION");
	}
	if (use_mod) {
		struct mmnt_test_register reg = { .pid = 0 };
		mod = open("/dev/mmnt_test", O_RDWR | O_CLOEXEC);
		if (mod < 0)
			die("/dev/mmnt_test (load tests/kmod)");
		if (ioctl(mod, MMNT_IOC_REGISTER, &reg) < 0)
			die("MMNT_IOC_REGISTER");
	}
	if (go) {
		char sub[4096];
		snprintf(sub, sizeof(sub), "%s.subscribed", go);
		int fd = open(sub, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd < 0)
			die(sub);
		close(fd);
		while (access(go, F_OK) != 0)
			usleep(20000);
	}
	if (counts(mod, &c0) < 0)
		die("MMNT_IOC_COUNTS");
	double t0 = now();
	for (long r = 0; r < rounds; r++) {
		for (long p = 0; p < pages; p++)
			sink += buf[p * psz];		/* zero page */
		for (long p = 0; p < pages; p++)
			buf[p * psz] = (unsigned char)(r + 1);	/* COW */
		if (mprotect(buf, len, PROT_READ) || mprotect(buf, len, PROT_READ | PROT_WRITE))
			die("mprotect");
		if (madvise(buf, len, MADV_DONTNEED))
			die("madvise");
		if (round_us > 0) {	/* each round starts no earlier than t0 + r * round_us */
			double wait = t0 + (r + 1) * round_us / 1e6 - now();
			if (wait > 0)
				usleep((useconds_t)(wait * 1e6));
		}
	}
	double t1 = now();
	if (counts(mod, &c1) < 0)
		die("MMNT_IOC_COUNTS");
	long ops = rounds * (pages + 3);
	unsigned long long calls = 0;
	for (int h = 0; h < MMNT_T_NR_HOOKS; h++)	/* change_pte too, where the kernel has it */
		calls += c1.calls[h] - c0.calls[h];
	/* The whole subscription's counts, read once it is over (the module keeps them
	 * past MMNT_IOC_UNREGISTER): every call of its callbacks from the open to the
	 * unregister, release left out, and when (sub_window_ns: the open, the read). */
	struct mmnt_test_counts c2 = {0};
	unsigned long long sub_calls = 0;
	if (mod >= 0) {
		if (ioctl(mod, MMNT_IOC_UNREGISTER) < 0)
			die("MMNT_IOC_UNREGISTER");
		if (counts(mod, &c2) < 0)
			die("MMNT_IOC_COUNTS");
		for (int h = 0; h < MMNT_T_NR_HOOKS; h++)
			if (h != MMNT_T_RELEASE)
				sub_calls += c2.calls[h];
	}
	/* hook_calls are the module's calls between its two counts: window_ns, on the
	 * kernel's monotonic clock (a tracer's timestamps), says when. The process may
	 * see more outside it: automatic NUMA balancing migrates its pages in its own
	 * context, while it waits for the go file or before it unsubscribes; sub_calls
	 * has those too. */
	printf("{\"ops\": %ld, \"seconds\": %.6f, \"ops_per_s\": %.1f, \"hook_calls\": %llu, "
	       "\"window_ns\": [%llu, %llu], \"sub_calls\": %llu, \"sub_window_ns\": [%llu, %llu], "
	       "\"kvm\": %s, \"module\": %s, \"rounds\": %ld, \"pages\": %ld}\n",
	       ops, t1 - t0, ops / (t1 - t0), calls,
	       (unsigned long long)c0.read_ns, (unsigned long long)c1.read_ns,
	       sub_calls, (unsigned long long)c2.reset_ns, (unsigned long long)c2.read_ns,
	       use_kvm ? "true" : "false", use_mod ? "true" : "false", rounds, pages);
	fflush(stdout);
	(void)sink;
	return 0;
}
