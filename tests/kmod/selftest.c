// SPDX-License-Identifier: GPL-2.0
/*
 * Selftest of mmnt_test.ko. Run as root in a guest with the module loaded:
 *   gcc -O2 -Wall -o /tmp/mmnt_selftest tests/kmod/selftest.c
 *   /tmp/mmnt_selftest [--no-sleep]
 * It drives workloads on its own mm, reads back every record, prints a
 * per-phase and per-hook summary and checks that MMNT_IOC_COUNTS agrees with
 * the records read. Exit status 0 when the checks pass.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mmnt_test_uapi.h"

#define NPAGES 64
#define MAXEV 16

static const char *hook_names[MMNT_T_NR_HOOKS] = {
	"START", "END", "SECONDARY_TLB", "RELEASE", "CLEAR_FLUSH_YOUNG",
	"CLEAR_YOUNG", "TEST_YOUNG", "CHANGE_PTE", "INTERVAL",
};
/* enum mmu_notifier_event, same in 6.1 and 6.12 include/linux/mmu_notifier.h */
static const char *event_names[] = {
	"UNMAP", "CLEAR", "PROTECTION_VMA", "PROTECTION_PAGE", "SOFT_DIRTY",
	"RELEASE", "MIGRATE", "EXCLUSIVE",
};

struct hstat {
	uint64_t n, atomic, irqs_off, nonblock, eagain;
	uint32_t pc_min, pc_max;
	uint64_t ev[MAXEV + 1];	/* [MAXEV]: event -1 */
};

static int fd;
static long page;
static struct hstat total[MMNT_T_NR_HOOKS];
static uint64_t total_records;

static void die(const char *what)
{
	perror(what);
	exit(2);
}

static void xioctl(unsigned long req, void *arg, const char *what)
{
	if (ioctl(fd, req, arg) < 0)
		die(what);
}

static void account(struct hstat *h, const struct mmnt_test_record *r)
{
	if (!h->n || r->preempt_count < h->pc_min)
		h->pc_min = r->preempt_count;
	if (!h->n || r->preempt_count > h->pc_max)
		h->pc_max = r->preempt_count;
	h->n++;
	if (r->preempt_count || r->irqs_disabled)
		h->atomic++;
	if (r->irqs_disabled)
		h->irqs_off++;
	if (!r->blockable)
		h->nonblock++;
	if (r->hook == MMNT_T_START && r->ret == -EAGAIN)
		h->eagain++;
	h->ev[(r->event >= 0 && r->event < MAXEV) ? r->event : MAXEV]++;
}

static void print_stats(const char *indent, struct hstat *hs)
{
	for (int k = 0; k < MMNT_T_NR_HOOKS; k++) {
		struct hstat *h = &hs[k];
		char evs[256] = "";

		if (!h->n)
			continue;
		for (int e = 0; e <= MAXEV; e++) {
			char one[48];

			if (!h->ev[e])
				continue;
			snprintf(one, sizeof(one), "%s%s=%" PRIu64, evs[0] ? "," : "",
				 e == MAXEV ? "-" : e < 8 ? event_names[e] : "?", h->ev[e]);
			strncat(evs, one, sizeof(evs) - strlen(evs) - 1);
		}
		printf("%s%-17s n=%-5" PRIu64 " atomic=%-5" PRIu64 " pc=[0x%x..0x%x] irqoff=%" PRIu64
		       " nonblock=%" PRIu64 "%s events{%s}\n", indent, hook_names[k], h->n,
		       h->atomic, h->pc_min, h->pc_max, h->irqs_off, h->nonblock,
		       h->eagain ? " EAGAIN!" : "", evs);
	}
}

/* Read and consume every pending record; print them as phase @name. */
static void drain_fd(int fd, const char *name, int accumulate);
static void drain(const char *name)
{
	drain_fd(fd, name, 1);
}

static void drain_fd(int fd, const char *name, int accumulate)
{
	static struct mmnt_test_record buf[512];
	struct hstat phase[MMNT_T_NR_HOOKS];
	uint64_t n = 0;
	ssize_t got;

	memset(phase, 0, sizeof(phase));
	while ((got = read(fd, buf, sizeof(buf))) > 0) {
		if (got % sizeof(buf[0])) {
			fprintf(stderr, "short record read %zd\n", got);
			exit(2);
		}
		for (size_t i = 0; i < got / sizeof(buf[0]); i++) {
			if (buf[i].hook >= MMNT_T_NR_HOOKS) {
				fprintf(stderr, "bad hook %u\n", buf[i].hook);
				exit(2);
			}
			if (accumulate && buf[i].seq != total_records) {
				fprintf(stderr, "seq gap: %" PRIu64 " != %" PRIu64 "\n",
					buf[i].seq, total_records);
				exit(2);
			}
			account(&phase[buf[i].hook], &buf[i]);
			if (accumulate) {
				account(&total[buf[i].hook], &buf[i]);
				total_records++;
			}
			n++;
		}
	}
	if (got < 0)
		die("read");
	printf("phase %s: %" PRIu64 " records\n", name, n);
	print_stats("    ", phase);
}

static void touch(volatile char *p, size_t npages)
{
	for (size_t i = 0; i < npages; i++)
		p[i * page] = (char)i;
}

static double now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static void behave(uint32_t hook, uint32_t b, uint32_t arg)
{
	struct mmnt_test_behave bh = { .hook = hook, .behaviour = b, .arg = arg };

	xioctl(MMNT_IOC_BEHAVE, &bh, "BEHAVE");
}

static char *map_anon(size_t npages)
{
	char *p = mmap(NULL, npages * page, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		die("mmap");
	return p;
}

/* fork; child writes the pages (its own mm) and exits; then parent writes. */
static void fork_child_writes(char *p)
{
	pid_t pid = fork();

	if (pid < 0)
		die("fork");
	if (!pid) {
		touch(p, NPAGES);
		_exit(0);
	}
	waitpid(pid, NULL, 0);
}

/* fork; parent writes while the child still shares the pages (COW copies in
 * our mm), then the child writes and exits. */
static void fork_parent_writes(char *p)
{
	int go[2];
	pid_t pid;
	char c = 0;

	if (pipe(go))
		die("pipe");
	pid = fork();
	if (pid < 0)
		die("fork");
	if (!pid) {
		if (read(go[0], &c, 1) != 1)
			_exit(1);
		touch(p, NPAGES);
		_exit(0);
	}
	touch(p, NPAGES);
	if (write(go[1], &c, 1) != 1)
		die("write");
	waitpid(pid, NULL, 0);
	close(go[0]);
	close(go[1]);
}

/* Clean file pages mapped privately, then MADV_PAGEOUT (reclaim unmaps them). */
static void pageout_file(void)
{
	const char *path = "/proc/self/exe";
	int f = open(path, O_RDONLY);
	char *p;
	volatile char sink = 0;
	off_t sz;

	if (f < 0)
		die("open exe");
	sz = lseek(f, 0, SEEK_END) & ~(page - 1);
	if (sz < page)
		sz = page;
	p = mmap(NULL, sz, PROT_READ, MAP_PRIVATE, f, 0);
	if (p == MAP_FAILED)
		die("mmap exe");
	for (off_t o = 0; o < sz; o += page)
		sink += p[o];
	if (madvise(p, sz, MADV_PAGEOUT))
		perror("madvise(MADV_PAGEOUT)");
	munmap(p, sz);
	close(f);
}

/* Mark the pages idle through page_idle (-> clear_young), if available. */
static void page_idle(char *p, size_t npages)
{
	int pm = open("/proc/self/pagemap", O_RDONLY);
	int bm = open("/sys/kernel/mm/page_idle/bitmap", O_RDWR);

	if (pm < 0 || bm < 0) {
		printf("    (page_idle not available: %s)\n", strerror(errno));
		goto out;
	}
	for (size_t i = 0; i < npages; i++) {
		uint64_t ent, pfn, bits = ~0ULL;

		if (pread(pm, &ent, 8, ((uintptr_t)p / page + i) * 8) != 8)
			break;
		if (!(ent & (1ULL << 63)))
			continue;
		pfn = ent & ((1ULL << 55) - 1);
		if (pwrite(bm, &bits, 8, pfn / 64 * 8) != 8)
			break;
		if (pread(bm, &bits, 8, pfn / 64 * 8) != 8)
			break;
	}
out:
	if (pm >= 0)
		close(pm);
	if (bm >= 0)
		close(bm);
}

/* A second client registers on a child's mm (and an interval in it); the
 * child unmaps and exits, so RELEASE comes from exit_mmap; unregister after. */
static void other_pid(void)
{
	int fd2 = open("/dev/mmnt_test", O_RDWR);
	int go[2], ready[2];
	char *r = map_anon(8);
	struct mmnt_test_register reg;
	struct mmnt_test_interval iv = { (uintptr_t)r, 8 * page };
	pid_t pid;
	char c = 0;

	if (fd2 < 0 || pipe(go) || pipe(ready))
		die("other_pid setup");
	pid = fork();
	if (pid < 0)
		die("fork");
	if (!pid) {
		touch(r, 8);
		if (write(ready[1], &c, 1) != 1 || read(go[0], &c, 1) != 1)
			_exit(1);
		munmap(r, 8 * page);
		_exit(0);
	}
	if (read(ready[0], &c, 1) != 1)
		die("read ready");
	reg.pid = pid;
	reg.flags = 0;
	if (ioctl(fd2, MMNT_IOC_REGISTER, &reg))
		die("REGISTER pid");
	if (ioctl(fd2, MMNT_IOC_INTERVAL, &iv))
		die("INTERVAL pid");
	if (write(go[1], &c, 1) != 1)
		die("write go");
	waitpid(pid, NULL, 0);
	drain_fd(fd2, "other-pid client: child munmap+exit", 0);
	if (ioctl(fd2, MMNT_IOC_UNREGISTER, NULL))
		die("UNREGISTER pid");
	drain_fd(fd2, "other-pid client: unregister after exit", 0);
	close(fd2);
	close(go[0]); close(go[1]); close(ready[0]); close(ready[1]);
	munmap(r, 8 * page);
	drain("other-pid (own client)");
}

int main(int argc, char **argv)
{
	int do_sleep = !(argc > 1 && !strcmp(argv[1], "--no-sleep"));
	struct mmnt_test_register reg = { 0 };
	struct mmnt_test_info info;
	struct mmnt_test_counts counts;
	struct mmnt_test_interval iv;
	double t0, t_plain, t_delay;
	char *p, *q;
	int bad = 0;

	page = sysconf(_SC_PAGESIZE);
	fd = open("/dev/mmnt_test", O_RDWR);
	if (fd < 0)
		die("/dev/mmnt_test");
	xioctl(MMNT_IOC_INFO, &info, "INFO");
	printf("info: features=0x%x%s%s%s record_size=%u (user %zu) capacity=%u\n",
	       info.features,
	       info.features & MMNT_F_SECONDARY_TLB_IS_ARCH ? " ARCH_SECONDARY_TLBS" : " INVALIDATE_RANGE",
	       info.features & MMNT_F_CHANGE_PTE ? " CHANGE_PTE" : "",
	       info.features & MMNT_F_RANGE_HAS_VMA ? " RANGE_HAS_VMA" : "",
	       info.record_size, sizeof(struct mmnt_test_record), info.log_capacity);
	if (info.record_size != sizeof(struct mmnt_test_record))
		bad = 1;

	xioctl(MMNT_IOC_REGISTER, &reg, "REGISTER");
	if (ioctl(fd, MMNT_IOC_REGISTER, &reg) == 0 || errno != EBUSY) {
		printf("FAIL: second REGISTER did not give EBUSY\n");
		bad = 1;
	}
	drain("register");

	p = map_anon(NPAGES);
	touch(p, NPAGES);
	drain("mmap+touch");

	if (mprotect(p, NPAGES * page, PROT_READ))
		die("mprotect");
	drain("mprotect-ro");
	if (mprotect(p, NPAGES * page, PROT_READ | PROT_WRITE))
		die("mprotect");
	touch(p, NPAGES);
	drain("mprotect-rw+touch");

	if (madvise(p, NPAGES * page, MADV_DONTNEED))
		die("madvise");
	drain("madv-dontneed");

	touch(p, NPAGES);
	fork_child_writes(p);
	drain("fork+child-writes+exit");
	touch(p, NPAGES);
	drain("parent-writes-after-child-exit");

	fork_parent_writes(p);
	drain("fork+parent-writes(COW)");

	page_idle(p, NPAGES);
	drain("page_idle");

	pageout_file();
	drain("file-map+MADV_PAGEOUT+munmap");

	if (munmap(p, NPAGES * page))
		die("munmap");
	drain("munmap");

	q = map_anon(16);
	touch(q, 16);
	iv.start = (uintptr_t)q;
	iv.length = 16 * page;
	xioctl(MMNT_IOC_INTERVAL, &iv, "INTERVAL");
	drain("interval-insert");
	if (munmap(q, 16 * page))
		die("munmap");
	drain("interval-munmap");

	/* DELAY 200us on START. */
	p = map_anon(NPAGES);
	touch(p, NPAGES);
	t0 = now_us();
	mprotect(p, NPAGES * page, PROT_READ);
	t_plain = now_us() - t0;
	mprotect(p, NPAGES * page, PROT_READ | PROT_WRITE);
	drain("pre-delay");
	behave(MMNT_T_START, MMNT_B_DELAY, 200);
	t0 = now_us();
	mprotect(p, NPAGES * page, PROT_READ);
	t_delay = now_us() - t0;
	drain("mprotect-with-DELAY200us-on-START");
	printf("    mprotect took %.0f us plain, %.0f us with DELAY 200us on START\n",
	       t_plain, t_delay);
	behave(MMNT_T_START, MMNT_B_NONE, 0);
	mprotect(p, NPAGES * page, PROT_READ | PROT_WRITE);
	touch(p, NPAGES);
	drain("restore");

	if (do_sleep) {
		/* MSLEEP 1 on SECONDARY_TLB: deliberately sleeps in atomic context. */
		behave(MMNT_T_SECONDARY_TLB, MMNT_B_MSLEEP, 1);
		fork_parent_writes(p);
		mprotect(p, NPAGES * page, PROT_READ);
		munmap(p, NPAGES * page);
		drain("MSLEEP1-on-SECONDARY_TLB: fork+COW, mprotect, munmap");
		behave(MMNT_T_SECONDARY_TLB, MMNT_B_NONE, 0);
	} else {
		munmap(p, NPAGES * page);
		drain("munmap");
	}

	other_pid();

	xioctl(MMNT_IOC_COUNTS, &counts, "COUNTS");
	printf("TOTAL: %" PRIu64 " records read; counts: logged=%" PRIu64 " lost=%" PRIu64 "\n",
	       total_records, counts.logged, counts.lost);
	print_stats("    ", total);
	for (int k = 0; k < MMNT_T_NR_HOOKS; k++) {
		if (counts.calls[k] != total[k].n || counts.atomic[k] != total[k].atomic) {
			printf("FAIL: %s counts calls=%" PRIu64 " atomic=%" PRIu64
			       " but records n=%" PRIu64 " atomic=%" PRIu64 "\n", hook_names[k],
			       counts.calls[k], counts.atomic[k], total[k].n, total[k].atomic);
			bad = 1;
		}
	}
	if (counts.logged != total_records || counts.lost)
		bad = 1;
	if (!total[MMNT_T_SECONDARY_TLB].atomic ||
	    total[MMNT_T_SECONDARY_TLB].atomic == total[MMNT_T_SECONDARY_TLB].n)
		printf("NOTE: secondary TLB calls are not a mix of atomic and non-atomic\n");

	xioctl(MMNT_IOC_RESET, NULL, "RESET");
	xioctl(MMNT_IOC_COUNTS, &counts, "COUNTS");
	if (counts.logged || counts.calls[MMNT_T_START])
		bad = 1;
	xioctl(MMNT_IOC_UNREGISTER, NULL, "UNREGISTER");
	{
		struct mmnt_test_record r;
		ssize_t n = read(fd, &r, sizeof(r));	/* RELEASE from unregister */

		printf("after UNREGISTER: read %zd bytes, hook %s\n", n,
		       n == sizeof(r) ? hook_names[r.hook] : "-");
		if (read(fd, &r, 1) != -1 || errno != EINVAL) {
			printf("FAIL: short buffer read did not give EINVAL\n");
			bad = 1;
		}
	}
	close(fd);
	printf("%s\n", bad ? "SELFTEST FAIL" : "SELFTEST PASS");
	return bad;
}
