/* SPDX-License-Identifier: GPL-2.0 */
/*
 * User-space interface of mmnt_test.ko, mmntrace's test secondary-MMU driver.
 * Shared by the module (tests/kmod/mmnt_test.c) and mmntrace/testmod.py, which
 * mirrors these layouts with ctypes (a unit test checks the sizes agree).
 *
 * /dev/mmnt_test: every open file is one "client". A client registers
 * subscriptions on one mm, chooses injected behaviour per hook, and reads back
 * what its callbacks saw.
 */
#ifndef MMNT_TEST_UAPI_H
#define MMNT_TEST_UAPI_H

#ifdef __KERNEL__
#include <linux/types.h>
#include <linux/ioctl.h>
#else
#include <linux/types.h>
#include <sys/ioctl.h>
#endif

/* Hooks, i.e. the callbacks of the module's subscriptions. Same numbering as
 * MMNT_HOOK_* in bpf/mmntrace.h. */
enum mmnt_test_hook {
	MMNT_T_START = 0,		/* invalidate_range_start */
	MMNT_T_END = 1,			/* invalidate_range_end */
	MMNT_T_SECONDARY_TLB = 2,	/* invalidate_range (<6.6) / arch_invalidate_secondary_tlbs */
	MMNT_T_RELEASE = 3,
	MMNT_T_CLEAR_FLUSH_YOUNG = 4,
	MMNT_T_CLEAR_YOUNG = 5,
	MMNT_T_TEST_YOUNG = 6,
	MMNT_T_CHANGE_PTE = 7,		/* only where the kernel has the op */
	MMNT_T_INTERVAL = 8,		/* mmu_interval_notifier_ops.invalidate */
	MMNT_T_NR_HOOKS = 9,
};

/* Injected behaviour, per hook. */
enum mmnt_test_behaviour {
	MMNT_B_NONE = 0,
	MMNT_B_DELAY = 1,	/* udelay(arg) busy-wait, arg in microseconds */
	MMNT_B_MSLEEP = 2,	/* msleep(arg), arg in milliseconds (always sleeps) */
	MMNT_B_MUTEX = 3,	/* mutex_lock + mutex_unlock of an uncontended mutex */
	MMNT_B_EAGAIN = 4,	/* start / interval: fail when the range is not blockable */
};

/* Feature bits reported by MMNT_IOC_INFO: which ops this build implements. */
#define MMNT_F_SECONDARY_TLB_IS_ARCH	(1u << 0)	/* op is arch_invalidate_secondary_tlbs */
#define MMNT_F_CHANGE_PTE		(1u << 1)
#define MMNT_F_RANGE_HAS_VMA		(1u << 2)

struct mmnt_test_info {
	__u32 features;		/* MMNT_F_* */
	__u32 record_size;	/* sizeof(struct mmnt_test_record) */
	__u32 log_capacity;	/* records kept per client before counting losses */
	__u32 pad;
};

/* MMNT_IOC_REGISTER flags */
#define MMNT_REG_TLB_ONLY	(1u << 0)	/* subscription B alone (secondary TLB): the mm's
						 * list gets a subscriber without a release op */

struct mmnt_test_register {
	__s32 pid;		/* 0: the caller's own mm */
	__u32 flags;		/* MMNT_REG_* */
};

struct mmnt_test_interval {
	__u64 start;		/* page aligned */
	__u64 length;
};

struct mmnt_test_behave {
	__u32 hook;		/* enum mmnt_test_hook */
	__u32 behaviour;	/* enum mmnt_test_behaviour */
	__u32 arg;
	__u32 count;		/* only the next `count` invocations (0: every one) */
};

/* One callback the module received. */
struct mmnt_test_record {
	__u64 seq;		/* 0, 1, 2, ... per client */
	__u64 ts_ns;		/* ktime_get_ns() at entry */
	__u64 mm;		/* struct mm_struct address (raw) */
	__u64 start;
	__u64 end;		/* test_young/change_pte: start + PAGE_SIZE */
	__u32 hook;		/* enum mmnt_test_hook */
	__s32 event;		/* enum mmu_notifier_event value, -1 where the hook has none */
	__u32 blockable;	/* 1 if the range was blockable, 0 if not; 1 for hooks without a range */
	__u32 preempt_count;	/* preempt_count() at entry */
	__u32 irqs_disabled;	/* irqs_disabled() at entry */
	__u32 pid;		/* current->tgid */
	__u32 tid;		/* current->pid */
	__s32 ret;		/* what the callback returned (0, -EAGAIN, or bool for interval) */
	__u32 migration_disabled;	/* current->migration_disabled at entry (0 without SMP) */
	__u32 rcu_depth;	/* rcu_preempt_depth() at entry (PREEMPT_RCU; 0 elsewhere) */
	__u64 body_ns;		/* ktime_get_ns() at the record (under the log lock) - ts_ns:
				 * the callback's own time, less its first and last few
				 * instructions; the tracer's duration of the call can only
				 * contain it (the observer effect's ground truth) */
};

struct mmnt_test_counts {
	__u64 calls[MMNT_T_NR_HOOKS];	/* every callback received, by hook */
	__u64 atomic[MMNT_T_NR_HOOKS];	/* of which preempt_count() != 0 or irqs disabled */
	__u64 logged;			/* records written to the log */
	__u64 lost;			/* records that did not fit in the log */
	__u64 reset_ns;			/* ktime_get_ns() at open or at the last RESET */
	__u64 read_ns;			/* ktime_get_ns() when these counts were read */
	__u64 msleeps;			/* injected msleep() calls */
	__u64 msleeps_switched;		/* of which the task was scheduled out: its
					 * voluntary context-switch count moved
					 * (a wake-up before schedule() reads the
					 * task state, e.g. the timer firing while
					 * the "scheduling while atomic" report is
					 * printed, means no switch) */
	__u64 body_ns[MMNT_T_NR_HOOKS];	/* summed body_ns of the records' calls, by hook
					 * (every call counted, logged or not) */
};

#define MMNT_IOC_MAGIC 'M'
#define MMNT_IOC_INFO		_IOR(MMNT_IOC_MAGIC, 1, struct mmnt_test_info)
#define MMNT_IOC_REGISTER	_IOW(MMNT_IOC_MAGIC, 2, struct mmnt_test_register)
#define MMNT_IOC_UNREGISTER	_IO(MMNT_IOC_MAGIC, 3)
#define MMNT_IOC_INTERVAL	_IOW(MMNT_IOC_MAGIC, 4, struct mmnt_test_interval)
#define MMNT_IOC_BEHAVE		_IOW(MMNT_IOC_MAGIC, 5, struct mmnt_test_behave)
#define MMNT_IOC_COUNTS		_IOR(MMNT_IOC_MAGIC, 6, struct mmnt_test_counts)
#define MMNT_IOC_RESET		_IO(MMNT_IOC_MAGIC, 7)
/* Sleep uninterruptibly (D state) for N ms (at most 60000). A thread parked
 * here keeps an OOM victim's mm alive, so that the OOM reaper, which may not
 * block, is the one that unmaps it. */
#define MMNT_IOC_DSLEEP		_IOW(MMNT_IOC_MAGIC, 8, __u32)
/* As MMNT_IOC_INTERVAL, with a second ops table whose invalidate is
 * mmnt_interval_invalidate_alt (another subscriber type on the same mm, as
 * two drivers' userptrs are); its calls count and log as MMNT_T_INTERVAL. */
#define MMNT_IOC_INTERVAL_ALT	_IOW(MMNT_IOC_MAGIC, 9, struct mmnt_test_interval)

/* read(2) on the file returns whole struct mmnt_test_record entries, oldest
 * first, and consumes them. */

#endif
