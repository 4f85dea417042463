/* SPDX-License-Identifier: GPL-2.0 */
/*
 * mmntrace record layouts: the ONE definition shared by the BPF programs
 * (bpf/mmntrace.bpf.c) and the Python decoder (mmntrace/layout.py parses this
 * file to build its numpy dtypes; keep to fixed-width fields, one per line).
 *
 * Every record on the ring buffer is a struct mmnt_record (fixed size, so
 * user space decodes a whole batch with one numpy.frombuffer). Its `type`
 * says which fields mean what (retsnoop's tagged records, with one size).
 */
#ifndef MMNTRACE_H
#define MMNTRACE_H

#define MMNT_FORMAT_VERSION 2	/* 2: hook records carry their callbacks (cb_*) */
#define MMNT_COMM_LEN 16
#define MMNT_MAX_STACK 32	/* frames kept per stack */
#define MMNT_MAX_STACKS 16384	/* distinct stacks per session */
#define MMNT_MAX_SUBS 8		/* subscriptions walked per mm on discovery */
#define MMNT_NR_SLOTS 40	/* log2 latency slots (ns) */
#define MMNT_REC_CBS 2		/* callbacks a hook record carries (a power of 2) */
/* The placeholder in the fentry hook programs' instructions that
 * mmntrace/fentry.py replaces by the hook id of the function each copy is
 * loaded on (hook_const() in bpf/mmntrace.bpf.c) */
#define MMNT_HOOK_IMM 1296975873	/* 0x4d4e4801 */
/* Likewise in the fentry callback program (cb_const()): the function's
 * address, and its struct cbinfo's hook, series and chained flag packed as
 * in a kprobe link's cookie (below) */
#define MMNT_CB_FUNC_IMM 1296975874	/* 0x4d4e4802 */
#define MMNT_CB_INFO_IMM 1296975875	/* 0x4d4e4803 */
/* Where a program passes a bpf_loop() callback (MMNT_BPF_LOOP): the
 * placeholders that mmntrace/subprog.py turns into references to the
 * callbacks' instructions, which it appends to the program's
 * (mmnt_rb_step, mmnt_itree_step in bpf/discovery.h) */
#define MMNT_LOOP_RB_IMM 1296975876	/* 0x4d4e4804 */
#define MMNT_LOOP_ITREE_IMM 1296975877	/* 0x4d4e4805 */
/* In the fentry programs' preempt_count read (read_pc() in bpf/context.h):
 * the load that mmntrace/fentry.py makes a reference to the per-CPU
 * variable holding the count, by its BTF id (BPF_PSEUDO_BTF_ID) */
#define MMNT_PC_VAR_IMM 1296975878	/* 0x4d4e4806 */
/* A kprobe BPF link's cookie (hk_entry, cb_entry; mmntrace/attach.py): bit
 * 63 set, the hook id at bit 48, and for a callback its histogram series at
 * bit 32, chained at bit 62 and its address's lower half in bits 0-31 */
#define MMNT_COOKIE_VALID (1ULL << 63)
#define MMNT_COOKIE_CHAINED_SHIFT 62
#define MMNT_COOKIE_HOOK_SHIFT 48
#define MMNT_COOKIE_SERIES_SHIFT 32

/* Record types. */
enum mmnt_type {
	MMNT_REC_HOOK = 1,	/* an __mmu_notifier_* entry point returned */
	MMNT_REC_CALLBACK = 2,	/* a subscriber's op returned */
	MMNT_REC_SLEEP = 3,	/* a must-not-sleep callback slept or called a might-sleep function */
	MMNT_REC_OPS = 4,	/* a subscription's ops table was seen (discovery) */
	MMNT_REC_REGISTER = 5,	/* (un)registration of a subscription */
};

/* Hooks. Same numbering as tests/kmod/mmnt_test_uapi.h. Their stable names,
 * kernel symbols and ops members: the table in mmntrace/hooks.py, which reads
 * the ids from here (a unit test checks that each member has a row there). */
enum mmnt_hook {
	MMNT_HOOK_START = 0,		/* invalidate_range_start */
	MMNT_HOOK_END = 1,		/* invalidate_range_end */
	MMNT_HOOK_SECONDARY_TLB = 2,	/* secondary_tlb: invalidate_range (<6.6) / arch_invalidate_secondary_tlbs */
	MMNT_HOOK_RELEASE = 3,
	MMNT_HOOK_CLEAR_FLUSH_YOUNG = 4,
	MMNT_HOOK_CLEAR_YOUNG = 5,
	MMNT_HOOK_TEST_YOUNG = 6,
	MMNT_HOOK_CHANGE_PTE = 7,
	MMNT_HOOK_INTERVAL = 8,		/* mmu_interval_notifier_ops.invalidate / mn_itree_invalidate */
	MMNT_NR_HOOKS = 9,
	MMNT_HOOK_CALIB = 254,		/* in-kernel only: the probe-overhead calibration (getppid) */
	MMNT_HOOK_NONE = 255,
};

/* drops[] beyond the record types: aggregation lost for want of a histogram
 * series (more distinct driver callbacks than MMNT_NR_SERIES allows) */
#define MMNT_DROP_SERIES	6
/* a process forked by a traced command, not followed (the table was full) */
#define MMNT_DROP_FOLLOW	7
/* range starts and releases, while a callback probe was pending, whose interval
 * notifiers could not all be counted: more below the range's end than one walk
 * visits (count_itree) */
#define MMNT_DROP_ITREE		8
/* range starts that failed and test_young calls that answered young, while a
 * callback probe was pending: the core may have stopped before some
 * subscribers, so which were called (untimed) is unknown (count_untimed) */
#define MMNT_DROP_EARLY_STOP	9

/* flags */
#define MMNT_FL_BLOCKABLE	(1 << 0)	/* range was blockable (1 for hooks without a range) */
#define MMNT_FL_ATOMIC		(1 << 1)	/* preempt_count() != 0 at entry (calibrated) */
#define MMNT_FL_IRQS_OFF	(1 << 2)	/* IRQs disabled at entry */
#define MMNT_FL_MUST_NOT_SLEEP	(1 << 3)	/* the rules forbid sleeping here */
#define MMNT_FL_PC_UNKNOWN	(1 << 4)	/* preempt count could not be read */
#define MMNT_FL_IRQ_UNKNOWN	(1 << 5)	/* IRQ state could not be read (fentry) */
#define MMNT_FL_UNREGISTER	(1 << 6)	/* MMNT_REC_REGISTER: removal */
#define MMNT_FL_SKIP		(1 << 7)	/* in-kernel only: hook invocation not sampled */

/* rt: on PREEMPT_RT a spinlock_t (the page-table lock) is a sleeping lock and
 * preempt_count() stays 0 under it; holding one disables migration and enters
 * an RCU read-side section (kernel/locking/spinlock_rt.c), both per task */
#define MMNT_RT_MIGRATE_OFF	(1 << 0)	/* current->migration_disabled > 0 */
#define MMNT_RT_RCU		(1 << 1)	/* current->rcu_read_lock_nesting > 0 */

/* MMNT_REC_SLEEP kinds */
#define MMNT_SLEEP_SWITCH	1	/* scheduled out voluntarily (rule "sleep") */
#define MMNT_SLEEP_MIGHT	2	/* called a might-sleep function (rule "might_sleep") */
#define MMNT_SLEEP_COUNTED	3	/* scheduled out voluntarily, seen by the task's count at the
					 * section's return (rule "sleep"; ret: how many times; no stack) */

struct mmnt_record {
	__u8 type;		/* enum mmnt_type */
	__u8 hook;		/* enum mmnt_hook */
	__u8 flags;		/* MMNT_FL_* */
	__u8 kind;		/* SLEEP: MMNT_SLEEP_*; OPS: op slot count; CALLBACK: the hook it ran under (MMNT_HOOK_NONE: none) */
	__u16 cpu;
	__u8 rt;		/* PREEMPT_RT only, at entry (calibrated): MMNT_RT_* bits; 0 elsewhere */
	__u8 ncb;		/* HOOK: callbacks carried in cb_* (below); 0 for the other types */
	__u32 pid;		/* tgid */
	__u32 tid;
	__u32 preempt_count;	/* at entry, calibrated (probe overhead removed) */
	__s32 ret;		/* return value (int or bool); 0 for void */
	__s32 event;		/* enum mmu_notifier_event value, -1 if none */
	__s32 stack_id;		/* kernel stack (stack_ids map), < 0 if none */
	__u64 seq;		/* HOOK/CALLBACK/SLEEP: invocation id of the callback (or hook) */
	__u64 ts_ns;		/* bpf_ktime_get_ns() at entry (SLEEP: at the sleep) */
	__u64 dur_ns;
	__u64 mm;
	__u64 start;
	__u64 end;
	__u64 func;		/* CALLBACK: the op's address; HOOK: 0; SLEEP: callback (or 0 = hook) */
	__u64 addr;		/* SLEEP: might-sleep function address; OPS: ops table; REGISTER: subscription;
				 * CALLBACK: seq of the hook invocation it ran under (0: none) */
	char comm[MMNT_COMM_LEN];
	/*
	 * HOOK, streaming: the first `ncb` of the callbacks it called, each what
	 * its own CALLBACK record would say (mmntrace/decode.py carried() makes
	 * it one) but for what it shares with its hook: pid, tid, comm, mm,
	 * start, end and event, its kind (the hook) and addr (the hook's seq),
	 * stack_id (-1) and cpu (the hook record's). A callback whose range, event
	 * or seq's CPU differs from its hook's, one past MMNT_REC_CBS, or one
	 * outside a hook is sent as a CALLBACK record as before. About 1.2
	 * records per hook call of the bench instead of 3.6, each a ring
	 * reservation in the BPF programs and a copy and a trip through the spool
	 * file in the recorder (README, Benchmarks).
	 */
	__u64 cb_func[MMNT_REC_CBS];
	__u32 cb_ts[MMNT_REC_CBS];	/* its entry, ns after the hook's ts_ns */
	__u32 cb_dur[MMNT_REC_CBS];
	__u32 cb_pc[MMNT_REC_CBS];	/* preempt_count */
	__s32 cb_ret[MMNT_REC_CBS];
	__u32 cb_seq[MMNT_REC_CBS];	/* its seq's low half (the high one is the hook's) */
	__u8 cb_hook[MMNT_REC_CBS];
	__u8 cb_flags[MMNT_REC_CBS];
	__u8 cb_rt[MMNT_REC_CBS];
	__u8 cb_pad[MMNT_REC_CBS];	/* (no hidden padding: every byte of a record is written) */
};

/* MMNT_REC_OPS carries the ops table's function pointers in start/end/...:
 * they do not fit one record, so one OPS record is sent per (ops, hook) that
 * is implemented: hook = the op, func = the function, addr = the ops table. */

/* In-kernel aggregation (--aggregate): log2 histogram of durations. */
struct mmnt_hist_key {
	__u64 func;		/* callback address, 0 for the hook itself */
	__u32 hook;
	__s32 event;
	__u32 slot;		/* log2(dur_ns) */
	__u32 pad;
};

#endif /* MMNTRACE_H */
