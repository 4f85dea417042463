// SPDX-License-Identifier: GPL-2.0
/*
 * ambient_bench: kernel paths that never reach an MMU notifier (issue 12).
 *
 * A tracer that only watches MMU notifiers should cost nothing here; what it
 * costs is its "ambient tax" (system-wide probes such as might-sleep
 * functions, sched_switch). This process has no notifier subscriber, so no
 * __mmu_notifier_* function is ever called for its mm.
 *
 *   ambient_bench MODE OPS
 *
 *   pipe    OPS round trips of one byte between two processes over two pipes
 *           (two context switches each: sched_switch, wake-ups)
 *   open    OPS open + fstat + close of /dev/null (path walk, file allocation;
 *           nothing on the 9p root file system of the lab)
 *   alloc   OPS mmap of 16 anonymous pages, a write to each (page faults,
 *           page allocation), munmap
 *
 * Prints one JSON line: mode, ops, seconds (CLOCK_MONOTONIC), ops_per_s.
 *
 * The process (and the pipe's partner) runs on CPU 0 only: a round trip is
 * then two context switches on one CPU, not a wake-up that waits for the
 * other vCPU's turn, which under the lab's single-threaded TCG made the
 * pipe figures swing by tens of percent between two runs of the same tool.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
	fprintf(stderr, "ambient_bench: %s: %s\n", what, strerror(errno));
	exit(2);
}

static void run_pipe(long ops)
{
	int a[2], b[2];
	char c = 'x';
	pid_t pid;

	if (pipe(a) || pipe(b))
		die("pipe");
	pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		for (long i = 0; i < ops; i++) {
			if (read(a[0], &c, 1) != 1 || write(b[1], &c, 1) != 1)
				_exit(1);
		}
		_exit(0);
	}
	for (long i = 0; i < ops; i++) {
		if (write(a[1], &c, 1) != 1 || read(b[0], &c, 1) != 1)
			die("pipe round trip");
	}
	waitpid(pid, NULL, 0);
}

static void run_open(long ops)
{
	struct stat st;

	for (long i = 0; i < ops; i++) {
		int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

		if (fd < 0)
			die("open");
		if (fstat(fd, &st))
			die("fstat");
		close(fd);
	}
}

static void run_alloc(long ops)
{
	const long page = sysconf(_SC_PAGESIZE), n = 16;

	for (long i = 0; i < ops; i++) {
		char *p = mmap(NULL, n * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

		if (p == MAP_FAILED)
			die("mmap");
		for (long j = 0; j < n; j++)
			p[j * page] = 1;
		if (munmap(p, n * page))
			die("munmap");
	}
}

int main(int argc, char **argv)
{
	double t0, t;
	long ops;

	if (argc != 3 || (ops = atol(argv[2])) <= 0) {
		fprintf(stderr, "usage: ambient_bench pipe|open|alloc OPS\n");
		return 2;
	}
	cpu_set_t one;
	CPU_ZERO(&one);
	CPU_SET(0, &one);
	if (sched_setaffinity(0, sizeof(one), &one))
		die("sched_setaffinity");
	t0 = now();
	if (!strcmp(argv[1], "pipe"))
		run_pipe(ops);
	else if (!strcmp(argv[1], "open"))
		run_open(ops);
	else if (!strcmp(argv[1], "alloc"))
		run_alloc(ops);
	else {
		fprintf(stderr, "ambient_bench: unknown mode %s (pipe, open, alloc)\n", argv[1]);
		return 2;
	}
	t = now() - t0;
	printf("{\"mode\": \"%s\", \"ops\": %ld, \"seconds\": %.6f, \"ops_per_s\": %.1f}\n", argv[1], ops, t, ops / t);
	return 0;
}
