// SPDX-License-Identifier: GPL-2.0
/*
 * mmntrace kernel side (bcc C). Compiled once by mmntrace/tracer.py with
 * -I<repo>/bpf and these -D constants (so the verifier prunes what is off):
 *
 *   MMNT_RINGBUF (0/1), MMNT_RINGBUF_PAGES    transport
 *   MMNT_FILTER_PID (tgid), MMNT_FILTER_COMM ("name")   filters, optional
 *   MMNT_FILTER_TREE                          the pid filter follows the processes it forks
 *   MMNT_SELF_TGID                            the tracer (calibration probe)
 *   MMNT_PC_ADDR, MMNT_PCPU_OFF_ADDR          per-cpu preempt_count, __per_cpu_offset (0: unknown)
 *   MMNT_RT, MMNT_TASK_MD_OFF, MMNT_TASK_RCU_OFF  PREEMPT_RT: offsets of task_struct's
 *                                             migration_disabled, rcu_read_lock_nesting
 *   MMNT_SUBS_LIST_OFF                        offsetof(struct mmu_notifier_subscriptions, list), -1: unknown
 *   MMNT_HAVE_OP_<MEMBER>                     struct mmu_notifier_ops members present (one per
 *                                             member of mmntrace/hooks.py's table: INVALIDATE_RANGE,
 *                                             ARCH_INVALIDATE_SECONDARY_TLBS, CHANGE_PTE...)
 *   MMNT_GFP_DIRECT_RECLAIM                   __GFP_DIRECT_RECLAIM value (BTF or header)
 *   MMNT_AGGREGATE                            durations into in-kernel histograms
 *   MMNT_MIN_LAT_NS                           streaming, but only calls at least this long
 *                                             are sent; every call goes to the histograms
 *   MMNT_BTF_LAYOUT, MMNT_L_*                 struct layouts from BTF (else the headers give them)
 *   MMNT_LEAN_HEADERS, MMNT_PT_REGS_MEMBERS   (with MMNT_BTF_LAYOUT) struct pt_regs from BTF, the
 *                                             headers it and PAGE_SIZE came from left out (below)
 *   MMNT_TASK_STORAGE                         per-task state in task-local storage (else a hash),
 *                                             and the task's fields by BTF-typed loads (context.h)
 *   MMNT_SAMPLING                             the daemon's 1-in-N sampling
 *   MMNT_SLEEP_COUNT                          real sleeps seen by the task's voluntary-switch
 *                                             count at each must-not-sleep section's return,
 *                                             not by a sched_switch program (sleep.h)
 *   MMNT_CHAIN                                driver callbacks of some hooks have entry probes
 *                                             only: a callback ends where the next one its hook
 *                                             calls begins, or where the hook returns (below)
 *   MMNT_KPROBE_COOKIE                        hk_entry and cb_entry read what they serve from
 *                                             their BPF link's cookie (5.15+) where user space
 *                                             attached them with one (mmntrace/attach.py)
 *   MMNT_FENTRY, MMNT_MIGHT_SLEEP             the programs of the fentry backend, of
 *                                             might-sleep detection (not compiled
 *                                             when unused: compile time and memory)
 *
 * The parts, by concern: mmntrace.h (the one record layout, shared with
 * Python), state.h (per-call state), context.h (preempt count, IRQs, range,
 * the rules), discovery.h (subscribers' ops tables), hist.h (--aggregate),
 * sleep.h (sleeps in must-not-sleep sections); this file has the transport,
 * stacks and the programs. tracer.bpf_text() pastes the parts in where they
 * are included: bcc rewrites map calls in its main text only.
 *
 * Programs (attached by user space):
 *   hk_entry / hk_return       kprobe/kretprobe on every hook's kernel entry point
 *   cb_entry / cb_return       every discovered driver op (its link's cookie, or
 *                              cb_info by address, gives its hook)
 *   cbf_entry / cbf_exit       the same as fentry/fexit, loaded per callback by
 *                              mmntrace/bpfsys.py (bcc 0.26 binds trampolines
 *                              to vmlinux functions only, by name), each entry
 *                              copy with its cb_info entry in it (cb_const)
 *   ms_entry                   might-sleep functions; sched_switch tracepoint
 *   reg_*                      (un)registration, ops discovery
 *   rel_sync                   (--aggregate) synchronize_srcu: where the release
 *                              hook's last chained callback ends
 *   calib_entry                getppid, to measure the probe's own preempt_count
 *
 *   hkf_entry / hkf_exit       the hooks' fentry/fexit flavour, loaded per hook
 *                              function like cbf_*; msf_entry, calib_fentry the
 *                              same for might-sleep functions and getppid
 */
#ifdef MMNT_PROBE_READ_KERNEL
/*
 * The kernel has bpf_probe_read_kernel() (BTF says so). bcc defines it and its
 * siblings to bpf_probe_read above this line when its compile has not read
 * kallsyms to find out, which mmntrace/nokallsyms.py spares it: the helpers'
 * own names again, so the program is the same either way.
 */
#undef bpf_probe_read_kernel
#undef bpf_probe_read_kernel_str
#undef bpf_probe_read_user
#undef bpf_probe_read_user_str
#endif
#ifdef MMNT_LEAN_HEADERS
/*
 * The kernel headers that struct pt_regs and PAGE_SIZE come from (and
 * linux/log2.h, which bcc's helpers.h includes for its stack-map macro, unused
 * here) pull in some 120 more, parsed three times by every bcc compile
 * (over a second of each start in the lab's guests): codegen.py defines their
 * include guards, so that the #include below and bcc's own read nothing, and
 * gives struct pt_regs's members at BTF's offsets and the page size instead.
 */
struct pt_regs {
	MMNT_PT_REGS_MEMBERS
};
#ifndef X86_EFLAGS_IF
#define X86_EFLAGS_IF 0x200	/* EFLAGS bit 9: the architecture's, as in asm/processor-flags.h */
#endif
#endif
#include <uapi/linux/ptrace.h>
#ifndef MMNT_BTF_LAYOUT
/*
 * The layouts read below: from the kernel headers, or (MMNT_BTF_LAYOUT)
 * from the running kernel's BTF, which tracer.py passes as MMNT_L_* so that
 * clang need not parse linux/mm_types.h (half of each compile).
 */
#include <linux/sched.h>
#include <linux/mm_types.h>
#include <linux/mmu_notifier.h>
#define MMNT_L_MM_SUBS offsetof(struct mm_struct, notifier_subscriptions)
#define MMNT_L_SUB_HLIST offsetof(struct mmu_notifier, hlist)
#define MMNT_L_SUB_OPS offsetof(struct mmu_notifier, ops)
#define MMNT_L_ISUB_MM offsetof(struct mmu_interval_notifier, mm)
#define MMNT_L_IOPS_INVALIDATE offsetof(struct mmu_interval_notifier_ops, invalidate)
#define MMNT_L_ISUB_OPS offsetof(struct mmu_interval_notifier, ops)
#define MMNT_L_ISUB_TREE offsetof(struct mmu_interval_notifier, interval_tree)
#define MMNT_L_ITN_START offsetof(struct interval_tree_node, start)
#define MMNT_L_ITN_LAST offsetof(struct interval_tree_node, last)
#define MMNT_L_TASK_MM offsetof(struct task_struct, mm)
#define MMNT_L_TASK_GROUP_LEADER offsetof(struct task_struct, group_leader)
#define MMNT_L_TASK_PID offsetof(struct task_struct, pid)
#define MMNT_L_TASK_TGID offsetof(struct task_struct, tgid)
#define MMNT_L_TASK_NVCSW offsetof(struct task_struct, nvcsw)
#define MMNT_L_RB_LEFT offsetof(struct rb_node, rb_left)
#define MMNT_L_RB_RIGHT offsetof(struct rb_node, rb_right)
#define MMNT_L_RB_PARENT offsetof(struct rb_node, __rb_parent_color)
#define MMNT_L_RBC_LEFTMOST offsetof(struct rb_root_cached, rb_leftmost)
#define MMNT_L_RANGE_SIZE sizeof(struct mmu_notifier_range)
#define MMNT_L_RANGE_MM offsetof(struct mmu_notifier_range, mm)
#define MMNT_L_RANGE_START offsetof(struct mmu_notifier_range, start)
#define MMNT_L_RANGE_END offsetof(struct mmu_notifier_range, end)
#define MMNT_L_RANGE_FLAGS offsetof(struct mmu_notifier_range, flags)
#define MMNT_L_RANGE_EVENT offsetof(struct mmu_notifier_range, event)
#define MMNT_L_OPS_SIZE sizeof(struct mmu_notifier_ops)
#define MMNT_L_OPS_release offsetof(struct mmu_notifier_ops, release)
#define MMNT_L_OPS_clear_flush_young offsetof(struct mmu_notifier_ops, clear_flush_young)
#define MMNT_L_OPS_clear_young offsetof(struct mmu_notifier_ops, clear_young)
#define MMNT_L_OPS_test_young offsetof(struct mmu_notifier_ops, test_young)
#define MMNT_L_OPS_invalidate_range_start offsetof(struct mmu_notifier_ops, invalidate_range_start)
#define MMNT_L_OPS_invalidate_range_end offsetof(struct mmu_notifier_ops, invalidate_range_end)
#ifdef MMNT_HAVE_OP_INVALIDATE_RANGE
#define MMNT_L_OPS_invalidate_range offsetof(struct mmu_notifier_ops, invalidate_range)
#endif
#ifdef MMNT_HAVE_OP_ARCH_INVALIDATE_SECONDARY_TLBS
#define MMNT_L_OPS_arch_invalidate_secondary_tlbs offsetof(struct mmu_notifier_ops, arch_invalidate_secondary_tlbs)
#endif
#ifdef MMNT_HAVE_OP_CHANGE_PTE
#define MMNT_L_OPS_change_pte offsetof(struct mmu_notifier_ops, change_pte)
#endif
#define MMNT_L_TASK_REPORT_MAX TASK_REPORT_MAX
#endif
#ifndef MMU_NOTIFIER_RANGE_BLOCKABLE
#define MMU_NOTIFIER_RANGE_BLOCKABLE (1 << 0)	/* a #define, the same since 4.19 */
#endif
#ifndef PAGE_SIZE
#define PAGE_SIZE 4096
#endif
#include "mmntrace.h"
#define MMNT_STR_(x) #x
#define MMNT_STR(x) MMNT_STR_(x)	/* a placeholder's number in an asm statement */

#ifndef X86_EFLAGS_IF
#define X86_EFLAGS_IF 0x200
#endif
#ifndef MMNT_RINGBUF
#define MMNT_RINGBUF 0
#endif
#ifndef MMNT_RINGBUF_PAGES
#define MMNT_RINGBUF_PAGES 256
#endif
#ifndef MMNT_PC_ADDR
#define MMNT_PC_ADDR 0
#endif
#ifndef MMNT_PCPU_OFF_ADDR
#define MMNT_PCPU_OFF_ADDR 0
#endif
#ifndef MMNT_SUBS_ITREE_OFF
#define MMNT_SUBS_ITREE_OFF -1
#endif
#ifndef MMNT_SUBS_LIST_OFF
#define MMNT_SUBS_LIST_OFF -1
#endif
#ifndef MMNT_GFP_DIRECT_RECLAIM
#define MMNT_GFP_DIRECT_RECLAIM ((u64)__GFP_DIRECT_RECLAIM)
#endif
#ifndef MMNT_SELF_TGID
#define MMNT_SELF_TGID 0
#endif
#define MMNT_PC_MASK 0x7fffffffu	/* x86: bit 31 is PREEMPT_NEED_RESCHED, inverted */
#define MMNT_OPS_SLOTS 16		/* pointers read from an ops table */

/* ---- maps --------------------------------------------------------------- */

#if MMNT_RINGBUF
BPF_RINGBUF_OUTPUT(events, MMNT_RINGBUF_PAGES);
#else
BPF_PERF_OUTPUT(events);
#endif
/*
 * Counters user space reads while the probes run (walk_gen at every poll,
 * drops at every overhead check). Where arrays can be mmap()ed (5.5+) it
 * reads them from memory, not by a bpf() lookup each: one syscall per poll
 * less, and a lookup holds its CPU's bpf_prog_active, during which a kprobe
 * program that fires on that CPU is skipped (a miss; on PREEMPT_RT the
 * lookup can be preempted there). One shared array then, not per CPU: a
 * drop is rare, its atomic add cheap.
 */
#ifdef MMNT_MMAP_ARRAYS
#ifndef BPF_F_MMAPABLE
#define BPF_F_MMAPABLE (1U << 10)
#endif
#define MMNT_READ_ARRAY(name, leaf, n) BPF_F_TABLE("array", int, leaf, name, n, BPF_F_MMAPABLE)
MMNT_READ_ARRAY(drops, u64, 16);		/* by record type, then MMNT_DROP_* */
#else
#define MMNT_READ_ARRAY(name, leaf, n) BPF_ARRAY(name, leaf, n)
BPF_PERCPU_ARRAY(drops, u64, 16);		/* by record type, then MMNT_DROP_* */
#endif
/*
 * Stacks are keyed by their content, not by BPF_STACK_TRACE's hash bucket:
 * a stackmap answers -EEXIST when two different stacks share a bucket, and
 * lost one stack in ten on a busy run. Ids are unique, not dense; user
 * space looks a new id up in stack_by_id.
 */
struct stack_key { u64 ip[MMNT_MAX_STACK]; };
BPF_PERCPU_ARRAY(stack_scratch, struct stack_key, 1);
BPF_HASH(stack_ids, struct stack_key, u32, MMNT_MAX_STACKS);
BPF_HASH(stack_by_id, u32, struct stack_key, MMNT_MAX_STACKS);
BPF_PERCPU_ARRAY(stack_next, u32, 1);	/* ids: cpu << 20 | per-CPU count */

/* lr: the link register at a kprobe on a function's entry (arm64; 0 elsewhere):
 * the function has not saved it yet, so the unwinder, which starts from the
 * caller's frame, misses the direct caller (ptep_set_access_flags for the seed's
 * permission upgrade); it goes in after the function itself. */
static __always_inline s32 get_stack_id(void *ctx, u64 lr)
{
	u32 z = 0, nid;
	struct stack_key *k = stack_scratch.lookup(&z);
	u32 *id, *next;

	if (!k)
		return -1;
	/* bpf_get_stack zero-fills the rest of the buffer */
	if (lr) {		/* the stack one slot on, then [the function, lr, ...] */
		if (bpf_get_stack(ctx, &k->ip[1], sizeof(k->ip) - sizeof(k->ip[0]), 0) < 0)
			return -2;
		k->ip[0] = k->ip[1];
		k->ip[1] = lr;
	} else if (bpf_get_stack(ctx, k->ip, sizeof(k->ip), 0) < 0) {
		return -2;
	}
	id = stack_ids.lookup(k);
	if (id)
		return *id;
	next = stack_next.lookup(&z);
	if (!next)
		return -1;
	/* no atomic fetch-add before BPF v3: count per CPU (kprobe programs
	 * do not nest on one CPU), and put the CPU in the high bits */
	nid = (bpf_get_smp_processor_id() << 20) | (*next & 0xfffff);
	*next += 1;
	if (stack_ids.insert(k, &nid) == 0) {
		stack_by_id.update(&nid, k);
		return nid;
	}
	id = stack_ids.lookup(k);	/* another CPU inserted it first */
	return id ? *id : -3;		/* -3: the map is full */
}

struct cbinfo {
	u64 func;			/* canonical function address */
	u32 hook;			/* enum mmnt_hook; sleepers: gfp arg index (0 = always) */
	u32 series;			/* callbacks: histogram series (MMNT_NR_HOOKS + n) */
	u32 chained;			/* callbacks under MMNT_CHAIN: probed at their entry alone
					 * (user space decides: mmntrace/callbacks.py chained()) */
};

/* A callback's struct cbinfo from 64 bits that carry its hook, series and
 * chained flag (mmntrace.h MMNT_COOKIE_*: a kprobe link's cookie, a fentry
 * copy's constant; mmntrace/attach.py callback_cookie) and its address. */
static __always_inline void cbinfo_unpack(struct cbinfo *ci, u64 func, u64 v)
{
	ci->func = func;
	ci->series = (v >> MMNT_COOKIE_SERIES_SHIFT) & 0xffff;
	ci->hook = (v >> MMNT_COOKIE_HOOK_SHIFT) & 0xff;
	ci->chained = (v >> MMNT_COOKIE_CHAINED_SHIFT) & 1;
}
BPF_ARRAY(sampling, u32, 1);			/* trace 1 hook invocation in N (0, 1: all) */
BPF_PERCPU_ARRAY(sample_ctr, u64, 1);

/* ---- helpers -------------------------------------------------------------- */

static __always_inline void count_drops(u32 type, u64 n)
{
	u64 *d = drops.lookup(&type);
	if (d)
#ifdef MMNT_MMAP_ARRAYS
		__sync_fetch_and_add(d, n);
#else
		*d += n;
#endif
}

static __always_inline void count_drop(u32 type)
{
	count_drops(type, 1);
}

static __always_inline int emit(void *ctx, struct mmnt_record *r)
{
#if MMNT_RINGBUF
	if (events.ringbuf_output(r, sizeof(*r), 0) != 0) {
		count_drop(r->type);
		return -1;
	}
#else
	if (events.perf_submit(ctx, r, sizeof(*r)) != 0) {
		count_drop(r->type);
		return -1;
	}
#endif
	return 0;
}

#ifdef MMNT_FILTER_TREE
/* `record -- CMD`: the command (user space puts its pid here before it runs)
 * and every process it, or one of them, forks while traced (sched_process_fork
 * below), as perf record follows a workload's children */
BPF_HASH(filter_tgids, u32, u8, 10240);
#endif

/* the current task passes the filters: its process is read only where a
 * process filter is compiled in (a helper call per probe firing otherwise) */
static __always_inline bool pass_filter(void)
{
#if defined(MMNT_FILTER_TREE) || defined(MMNT_FILTER_PID)
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
#endif
#ifdef MMNT_FILTER_TREE
	if (!filter_tgids.lookup(&tgid))
		return false;
#elif defined(MMNT_FILTER_PID)
	if (tgid != MMNT_FILTER_PID)
		return false;
#endif
#ifdef MMNT_FILTER_COMM
	char c[MMNT_COMM_LEN] = {};
	char want[MMNT_COMM_LEN] = MMNT_FILTER_COMM;
	bpf_get_current_comm(&c, sizeof(c));
#pragma unroll
	for (int i = 0; i < MMNT_COMM_LEN; i++) {
		if (c[i] != want[i])
			return false;
		if (!want[i])
			break;
	}
#endif
	return true;
}

/* Streaming every call (not --aggregate, not --min-latency): a hook's record
 * carries its first callbacks (mmntrace.h cb_*; carry_cb below) */
#if !defined(MMNT_AGGREGATE) && !defined(MMNT_MIN_LAT_NS)
#define MMNT_CARRY
#endif
#include "state.h"
#include "context.h"

static __always_inline void fill_common(struct mmnt_record *r, u8 type)
{
	u64 id = bpf_get_current_pid_tgid();
	r->type = type;
	r->cpu = bpf_get_smp_processor_id();
	r->pid = id >> 32;
	r->tid = (u32)id;
	bpf_get_current_comm(&r->comm, sizeof(r->comm));
}

/*
 * The hook and callback records, one or two per call when streaming, are
 * written in place: reserved in the ring buffer, filled there, submitted
 * (bpf_ringbuf_output() copies a record built on the stack into its
 * reservation). REC_BEGIN declares `r`, a zeroed record with its common
 * fields, or runs `fail` where the buffer is full (the drop counted);
 * REC_SEND sends it. The perf buffer (kernels before 5.8) keeps the copy.
 */
#if MMNT_RINGBUF
static __always_inline struct mmnt_record *rec_reserve(u8 type)
{
	struct mmnt_record *r = events.ringbuf_reserve(sizeof(struct mmnt_record));
	if (!r) {
		count_drop(type);
		return 0;
	}
	__builtin_memset(r, 0, sizeof(*r));	/* the ring's memory holds an older record */
	fill_common(r, type);
	return r;
}
static __always_inline void rec_submit(struct mmnt_record *r)
{
	events.ringbuf_submit(r, 0);	/* (bcc rewrites no map call inside a macro) */
}
#define REC_BEGIN(r, type, fail)				\
	struct mmnt_record *r = rec_reserve(type);		\
	if (!r)							\
		fail;
#define REC_SEND(ctx, r) rec_submit(r)
#else
#define REC_BEGIN(r, type, fail)				\
	struct mmnt_record r##_stack = {}, *r = &r##_stack;	\
	fill_common(r, type);
#define REC_SEND(ctx, r) emit(ctx, r)
#endif

/* A record's fields that a hook's or a callback's state holds (struct
 * hstate and struct cstate name them alike): what was called, in which
 * context, over which range; a hook, callback or sleep record starts so. */
#define REC_FROM_STATE(r, st)					\
	do {							\
		(r)->hook = (st)->hook;				\
		(r)->flags = (st)->flags;			\
		(r)->preempt_count = (st)->pc;			\
		(r)->rt = (st)->rt;				\
		(r)->event = (st)->event;			\
		(r)->seq = (st)->seq;				\
		(r)->mm = (st)->mm;				\
		(r)->start = (st)->start;			\
		(r)->end = (st)->end;				\
	} while (0)

#include "discovery.h"
#include "hist.h"
#include "sleep.h"

/* ---- hooks ---------------------------------------------------------------- */

/*
 * MMNT_CHAIN: a driver callback gets an entry probe only (one program run, one
 * dispatch, per call instead of two; cb_info's `chained`, which user space sets
 * per hook: mmntrace/callbacks.py chained_hooks). The core calls a hook's
 * subscribers one after the other (mm/mmu_notifier.c: an interval tree walk,
 * then the list), so a callback ends where the next one begins, or where its
 * hook returns; between them run a few instructions of the core's loop. Its
 * return value is not read: with --aggregate, which keeps none, every hook's
 * callbacks are chained; in a per-event recording those of the hooks whose ops
 * return nothing (range end, the secondary-TLB hook, change_pte). A release op
 * keeps its exit probe: mmu_notifier_unregister() calls it outside any hook.
 */

static __always_inline void cb_end(void *ctx, struct tstate *t, u64 now, u64 rc, bool own_probe);

/* a callback whose end will not be seen (a nested call, a missed chained end) */
static __always_inline void cb_forget(struct cstate *c)
{
	if (c->active && (c->flags & MMNT_FL_MUST_NOT_SLEEP))
		nosleep_add(-1);
	c->active = 0;
}

/* An invocation id is read by the records that carry it: every hook and
 * callback record when streaming; with --aggregate only sleep records, which
 * come from must-not-sleep sections alone. */
static __always_inline bool need_seq(u8 flags)
{
#ifdef MMNT_AGGREGATE
	return flags & MMNT_FL_MUST_NOT_SLEEP;
#else
	return true;
#endif
}

/* The daemon's event budget: true when this hook invocation is not sampled. */
static __always_inline bool sampled_out(void)
{
#ifndef MMNT_SAMPLING
	return false;		/* only the daemon samples: record pays nothing for it */
#endif
	u32 z = 0;
	u32 *n = sampling.lookup(&z);
	u64 *c;

	if (!n || *n <= 1)
		return false;
	c = sample_ctr.lookup(&z);
	if (!c)
		return false;
	return ((*c)++ % *n) != 0;
}

/*
 * Bodies shared by both backends. The kprobe programs below and the fentry
 * programs that tracer.py generates per kernel function (bcc binds a
 * trampoline program to its target by name: kfunc__<symbol>) pass the
 * arguments they read from pt_regs or from the trampoline's u64 ctx[].
 *
 * What a duration covers: entry programs take the start time as their last
 * step and return programs take the end time as their first, so a hook's or
 * callback's own probe work is outside it. The work of the callback probes
 * that fire inside a hook is measured by them (nested_ns) and taken off the
 * hook's duration.
 */
/* caller_at_return: the return program sees where the hook returns to (a
 * kretprobe: its registers' instruction pointer, the caller's address once the
 * rethook has put it back; the word at the stack pointer here would be the
 * rethook's trampoline once the kretprobe's entry half has run); not fexit */
static __always_inline int hook_entry(void *ctx, u32 hook, u64 a1, u64 a2, u64 a3, int irqs_off,
				      bool caller_at_return)
{
	if (hook != MMNT_HOOK_CALIB && !pass_filter())
		return 0;
	struct tstate *t = tstate_get(true);
	if (!t)
		return 0;
	struct hstate *s = &t->h;
	if (s->active && (s->flags & MMNT_FL_MUST_NOT_SLEEP))
		nosleep_add(-1);	/* nested hook: the outer one is forgotten */
#ifdef MMNT_CARRY
	if (s->active && s->ncarried)	/* with the callbacks its record was to carry */
		count_drops(MMNT_REC_CALLBACK, s->ncarried);
	s->ncarried = 0;
#endif
#ifdef MMNT_CHAIN
	if (t->c.chained)		/* and its callback, whose end is not to be seen */
		cb_forget(&t->c);
#endif
	s->active = 1;
	s->hook = hook;
	s->nested_ns = 0;
	s->ncb = 0;
	s->cb_over = 0;
	s->expected_at_entry = 0;
	s->pending = probing_pending();
	if (sampled_out()) {
		/* remembered, so that its callbacks are skipped too */
		s->flags = MMNT_FL_SKIP;
		return 0;
	}
	s->event = -1;
	s->flags = MMNT_FL_BLOCKABLE;
	s->mm = s->start = s->end = s->range = 0;
	s->pc = 0;
	s->only_end = hook == MMNT_HOOK_END && (u8)a2;	/* 0 where range_end has no such argument */
	if (hook == MMNT_HOOK_START || hook == MMNT_HOOK_END) {
		s->range = a1;
		read_range(a1, &s->mm, &s->start, &s->end, &s->event, &s->flags);
	} else if (hook == MMNT_HOOK_INTERVAL) {
		read_range(a2, &s->mm, &s->start, &s->end, &s->event, &s->flags);
	} else if (hook == MMNT_HOOK_TEST_YOUNG || hook == MMNT_HOOK_CHANGE_PTE) {
		s->mm = a1;
		s->start = a2;
		s->end = a2 + PAGE_SIZE;
	} else if (hook == MMNT_HOOK_RELEASE) {
		s->mm = a1;
	} else if (hook == MMNT_HOOK_CALIB) {
		s->mm = 0;		/* getppid: no mm to walk */
	} else {
		s->mm = a1;
		s->start = a2;
		s->end = a3;
	}
	entry_context(irqs_off, &s->pc, &s->flags, &s->rt);
	if (hook_forbids_sleep(hook, s->flags, s->rt)) {
		s->flags |= MMNT_FL_MUST_NOT_SLEEP;
		nosleep_add(1);
		section_enter(&s->nvcsw);
	}
	s->caller_at_return = 0;
#ifdef MMNT_AGGREGATE
	s->stack_id = -1;	/* no hook record is sent: skip the unwind (the costliest step) */
#else
	/*
	 * A hook record's stack gives its caller and, for the secondary-TLB hook,
	 * its caller class (mmntrace/symbolize.py); the unwind costs 10-30 us a
	 * call under the lab's emulator, however short (7.6 us on average for
	 * 6.1's change_pte in make bench). Range start and end, change_pte and the
	 * three young hooks are called through inline wrappers
	 * (include/linux/mmu_notifier.h: set_pte_at_notify(),
	 * ptep_clear_flush_young_notify()...), so their return address is that
	 * caller: no unwind where the return probe has it. So is the
	 * secondary-TLB hook's on x86, and its caller class is that caller's
	 * (tlb_finish_mmu, flush_tlb_mm_range, arch_tlbbatch_flush: a TLB flush;
	 * wp_page_copy, try_to_unmap_one...: a PTE cleared under its lock).
	 * arm64 unwinds (frame pointers: cheap) for the permission upgrade, which
	 * lies frames deeper (ptep_set_access_flags under wp_page_reuse). Release
	 * (rare) and the interval hook (called by the core itself) keep stacks.
	 */
	if (caller_at_return && (hook == MMNT_HOOK_START || hook == MMNT_HOOK_END || hook == MMNT_HOOK_CHANGE_PTE ||
				 hook == MMNT_HOOK_CLEAR_FLUSH_YOUNG || hook == MMNT_HOOK_CLEAR_YOUNG ||
				 hook == MMNT_HOOK_TEST_YOUNG
#ifndef MMNT_ARCH_ARM64
				 || hook == MMNT_HOOK_SECONDARY_TLB
#endif
	    )) {
		s->stack_id = -1;
		s->caller_at_return = 1;	/* hook_return() puts the address in */
	} else {
		s->stack_id = get_stack_id(ctx, irqs_off >= 0 ? KP_LR(ctx) : 0);
	}
#endif
	s->seq = need_seq(s->flags) ? next_seq() : 0;
	/* one LRU lookup per new mm, not per call; again after a module load or
	 * after an ops record was lost (ops_unsent) */
	u32 g = walk_key();
	if (s->mm != t->walked_mm || g != t->walked_gen) {
		walk_subs(ctx, s->mm);
		t->walked_mm = s->mm;
		t->walked_gen = g;
		/* an ops record lost meanwhile (the buffer full): this call's
		 * subscribers may have a table user space has not seen, whose
		 * callbacks no probe times; counted untimed at the return, as
		 * while probing is under way (count_untimed). The next call walks
		 * again (disc[3] moved), until the table is sent. */
		if (walk_key() != g)
			s->pending = 1;
	}
	/* release empties the mm's list of subscribers as it goes: what it will
	 * call is counted now (its callbacks timed are, at its return) */
	if (hook == MMNT_HOOK_RELEASE && (s->pending || probing_pending()))
		count_expected_at_entry(s);
	s->ts = bpf_ktime_get_ns();	/* last: our own work above is not the hook's */
	return 0;
}

/* now: the return program's first step (our own work after it is not the hook's);
 * ret_ip: where the hook returns to (0: unknown) */
static __always_inline int hook_return(void *ctx, u64 now, u32 hook, u64 rc, u64 ret_ip)
{
	struct tstate *t = tstate_get(false);

	if (!t)
		return 0;
	struct hstate *s = &t->h;
	/* MMNT_HOOK_NONE (the kprobe flavour): the hook this task is in */
	if (!s->active || (hook != MMNT_HOOK_NONE && s->hook != hook))
		return 0;
	hook = s->hook;
#ifdef MMNT_CHAIN
	if (t->c.active && t->c.chained)	/* the last callback it called ends here */
		cb_end(ctx, t, now, 0, false);
#endif
	s->active = 0;
	if (s->flags & MMNT_FL_SKIP) {
		tstate_put(t);
		return 0;
	}
	u64 dur = now - s->ts;
	dur = dur > s->nested_ns ? dur - s->nested_ns : 0;
	if (s->flags & MMNT_FL_MUST_NOT_SLEEP) {
		nosleep_add(-1);
		section_return(ctx, t, false, now);
	}
	if (hook == MMNT_HOOK_CALIB) {
		calib_sample(dur);
		tstate_put(t);
		return 0;
	}
	if (s->pending || probing_pending() || s->cb_over)	/* a probe may have gone in meanwhile */
		count_untimed(s, hook, rc);
#ifdef MMNT_AGGREGATE
	aggregate(hook, s->event, dur);
#else
#ifdef MMNT_MIN_LAT_NS
	aggregate(hook, s->event, dur);		/* every call counted and timed, */
	if (dur < MMNT_MIN_LAT_NS) {		/* only the slow ones sent */
		tstate_put(t);
		return 0;
	}
#endif
#ifdef MMNT_CARRY
	/* its carried callbacks are lost with it: counted as callback drops too */
	REC_BEGIN(r, MMNT_REC_HOOK, { count_drops(MMNT_REC_CALLBACK, s->ncarried); tstate_put(t); return 0; });
#else
	REC_BEGIN(r, MMNT_REC_HOOK, { tstate_put(t); return 0; });
#endif
	REC_FROM_STATE(r, s);
	if (hook == MMNT_HOOK_START || hook == MMNT_HOOK_INTERVAL || hook == MMNT_HOOK_CLEAR_FLUSH_YOUNG ||
	    hook == MMNT_HOOK_CLEAR_YOUNG || hook == MMNT_HOOK_TEST_YOUNG)
		r->ret = (s32)rc;
	r->stack_id = s->stack_id;
	r->ts_ns = s->ts;
	r->dur_ns = dur;
	r->addr = s->caller_at_return ? ret_ip : 0;	/* the caller, where no stack was taken */
#ifdef MMNT_CARRY
	u8 n = s->ncarried;
	r->ncb = n;
#pragma unroll
	for (int i = 0; i < MMNT_REC_CBS; i++) {
		if (i >= n)
			break;
		r->cb_func[i] = s->cb_func[i];
		r->cb_ts[i] = s->cb_ts[i];
		r->cb_dur[i] = s->cb_dur[i];
		r->cb_pc[i] = s->cb_pc[i];
		r->cb_ret[i] = s->cb_ret[i];
		r->cb_seq[i] = s->cb_seq[i];
		r->cb_hook[i] = s->cb_hook[i];
		r->cb_flags[i] = s->cb_flags[i];
		r->cb_rt[i] = s->cb_rt[i];
	}
#endif
	REC_SEND(ctx, r);
#endif
	tstate_put(t);
	return 0;
}

/*
 * kprobe flavour: one program pair serves every hook function (hook_ip maps
 * the probed address to its hook, as cb_info does for callbacks; the return
 * program takes the hook from the per-task state). One pair per hook meant
 * seven or nine more inlined copies of the bodies to compile, seconds of
 * every start in the lab. The fentry flavour (hkf_entry/hkf_exit below) is
 * one pair too, loaded on each hook function.
 */
BPF_HASH(hook_ip, u64, u32, 64);	/* probe address (addr, addr+4 with IBT) -> hook */

/*
 * The kprobe's cookie (MMNT_KPROBE_COOKIE): where user space attached the
 * entry program through a BPF link (mmntrace/attach.py KprobeLinks), the link
 * carries what hook_ip or cb_info would give (the layout: mmntrace.h,
 * MMNT_COOKIE_*), so a call costs no hash lookup; 0 where bcc attached it.
 */
#ifdef MMNT_KPROBE_COOKIE
static u64 (*mmnt_attach_cookie)(void *ctx) = (void *)174;	/* bpf_get_attach_cookie, 5.15+ */
#define KP_COOKIE(ctx) mmnt_attach_cookie(ctx)
#else
#define KP_COOKIE(ctx) 0ULL
#endif

/*
 * MMNT_KPROBE_HOOKS: the kprobe pair is compiled where a hook may need it:
 * the kprobe backend, and the fentry backend unless every hook function has
 * BTF (tracer.py; a trampoline refused at attach all the same compiles the
 * program again with it). Its two copies of the hook bodies were a third of
 * the program's code: 2-3 s of the compile in the lab's guests.
 */
#ifdef MMNT_KPROBE_HOOKS
int hk_entry(struct pt_regs *ctx)
{
	u64 ck = KP_COOKIE(ctx);
	u32 hook;
	if (ck & MMNT_COOKIE_VALID) {
		hook = (ck >> MMNT_COOKIE_HOOK_SHIFT) & 0xff;
	} else {
		u64 ip = bpf_get_func_ip(ctx);
		u32 *h = hook_ip.lookup(&ip);
		if (!h)
			return 0;
		hook = *h;
	}
	return hook_entry(ctx, hook, PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), PT_REGS_PARM3(ctx), KP_IRQS_OFF(ctx),
			  true);
}

int hk_return(struct pt_regs *ctx)
{
	u64 now = bpf_ktime_get_ns();
	return hook_return(ctx, now, MMNT_HOOK_NONE, PT_REGS_RC(ctx), PT_REGS_IP(ctx));
}
#endif /* MMNT_KPROBE_HOOKS */

#ifdef MMNT_CHAIN
/*
 * The release hook's chained callbacks (the interval notifiers' release calls,
 * mn_itree_release) end at the next release op's entry, each of which has its
 * exit probe. Where no subscriber of the list has a release op, what the core
 * does next is mn_hlist_release()'s synchronize_srcu(): a grace period
 * (0.15-2 ms in the lab) that the hook's return would add to the last
 * interval call. rel_sync ends it there instead, when the wait is the core's,
 * not the callback's own: the stack pointer at synchronize_srcu's entry is
 * then at or above the callback's at its entry (the core called both; on
 * Debian's 6.12 the wait is even a tail call, in the hook's own frame),
 * where a wait inside the callback is below it. The return address cannot
 * tell (that tail call returns to the hook's caller, or to the trampoline of
 * the hook's return probe). A callback entered by fentry has no stack pointer
 * to compare (0): its hook's return ends it, as without this probe.
 */
int rel_sync(struct pt_regs *ctx)
{
	u64 t0 = bpf_ktime_get_ns();
	struct tstate *t = tstate_get(false);

	if (!t || !t->h.active || t->h.hook != MMNT_HOOK_RELEASE || !t->c.active || !t->c.chained ||
	    !t->c.sp || PT_REGS_SP(ctx) < t->c.sp)
		return 0;
	cb_end(ctx, t, t0, 0, false);
	/* this program, and its dispatch, are not the hook's either */
	t->h.nested_ns += bpf_ktime_get_ns() - t0 + probe_overhead(0, true);	/* one kprobe, no exit */
	return 0;
}
#endif

/* ---- driver callbacks ------------------------------------------------------- */

/*
 * Two ways in: cb_entry/cb_return are a kprobe/kretprobe pair; cbf_entry and
 * cbf_exit are fentry/fexit programs, which tracer.py loads for each module
 * function through mmntrace/bpfsys.py (bcc 0.26 cannot bind a trampoline to
 * a module function). Both call the bodies below with the op's arguments
 * (a2 .. a4: its second to fourth; the first is the subscription).
 */
static __always_inline int cb_entry_body(void *ctx, u64 t0, struct cbinfo *ci, u64 a2, u64 a3, u64 a4,
					 int irqs_off, u64 sp)
{
	if (ci->hook != MMNT_HOOK_CALIB && !pass_filter())
		return 0;
	struct tstate *t = tstate_get(true);
	if (!t)
		return 0;
#ifdef MMNT_CHAIN
	if (t->c.active && t->c.chained)	/* the previous callback of this hook ends here */
		cb_end(ctx, t, t0, 0, false);
#endif
	struct hstate *hs = &t->h;
	bool in_hook = hs->active;
	if (in_hook && (hs->flags & MMNT_FL_SKIP))
		return 0;		/* its hook invocation was not sampled */
#ifdef MMNT_CHAIN
	bool chained = ci->chained;
	if (chained && !in_hook) {
		/* no hook of ours around it (none calls it so in mainline), no exit
		 * probe: its end cannot be seen. Counted as a call no probe timed;
		 * the calibration's stand-in called by any other task: nothing. */
		if (ci->hook != MMNT_HOOK_CALIB)
			add_to(ci->func, false);
		tstate_put(t);		/* (the tid-keyed hash: nothing in progress, no entry kept) */
		return 0;
	}
#else
	bool chained = false;
#endif
	if (!in_hook && ci->hook == MMNT_HOOK_RELEASE)
		release_seen(ci->func);	/* mmu_notifier_unregister() calling it */
	struct cstate *c = &t->c;
	cb_forget(c);			/* nested callback: the outer one is forgotten */
	u32 hook = ci->hook;
	c->active = 1;
	c->chained = chained;
	c->sp = sp;
	c->func = ci->func;
	c->series = ci->series;
	c->hook = hook;
	c->event = -1;
	c->flags = MMNT_FL_BLOCKABLE;
	c->mm = c->start = c->end = 0;
	c->pc = 0;
	if ((hook == MMNT_HOOK_START || hook == MMNT_HOOK_END) && in_hook && hs->range == a2 && a2) {
		/* the range its hook read already: no second read */
		c->mm = hs->mm;
		c->start = hs->start;
		c->end = hs->end;
		c->event = hs->event;
		c->flags = hs->flags & MMNT_FL_BLOCKABLE;
	} else if (hook == MMNT_HOOK_START || hook == MMNT_HOOK_END || hook == MMNT_HOOK_INTERVAL) {
		read_range(a2, &c->mm, &c->start, &c->end, &c->event, &c->flags);
	} else {
		if (in_hook) {
			c->event = hs->event;
			c->flags = hs->flags & MMNT_FL_BLOCKABLE;
		}
		c->mm = a2;
		if (hook == MMNT_HOOK_TEST_YOUNG || hook == MMNT_HOOK_CHANGE_PTE) {
			c->start = a3;
			c->end = a3 + PAGE_SIZE;
		} else if (hook != MMNT_HOOK_RELEASE) {
			c->start = a3;
			c->end = a4;
		}
	}
	entry_context(irqs_off, &c->pc, &c->flags, &c->rt);
	if (hook_forbids_sleep(hook, c->flags, c->rt)) {
		c->flags |= MMNT_FL_MUST_NOT_SLEEP;
		nosleep_add(1);
		section_enter(&c->nvcsw);
	}
	c->stack_id = -1;
	c->seq = need_seq(c->flags) ? next_seq() : 0;
	if (in_hook) {			/* timed: not counted as untimed at the hook's return */
		u8 n = hs->ncb;
		if (n < MMNT_HOOK_CBS) {
			hs->cbs[n & (MMNT_HOOK_CBS - 1)] = ci->func;
			hs->ncb = n + 1;
		} else if (hs->pending || probing_pending()) {
			add_to(ci->func, true);	/* beyond cbs[] (many interval notifiers): */
			hs->cb_over = 1;	/* counted now, and the return counts the rest */
		}
	}
	c->ts = bpf_ktime_get_ns();	/* last: our own work above is not the callback's */
	if (in_hook)			/* this program, and the dispatch around both of ours */
		hs->nested_ns += c->ts - t0 + probe_overhead(irqs_off, chained);
	return 0;
}

/* a callback's return value as its record keeps it: a bool, an int, or 0 (void) */
static __always_inline s32 cb_ret(u32 hook, u64 rc)
{
	if (hook == MMNT_HOOK_INTERVAL)
		return (u8)rc;
	if (hook == MMNT_HOOK_START || hook == MMNT_HOOK_CLEAR_FLUSH_YOUNG ||
	    hook == MMNT_HOOK_CLEAR_YOUNG || hook == MMNT_HOOK_TEST_YOUNG)
		return (s32)rc;
	return 0;
}

#ifdef MMNT_CARRY
/*
 * A callback that ended inside its hook goes into the hook's record (one
 * ring reservation and one record for the call instead of one per callback)
 * where that record can say all of it: the same mm, range and event as the
 * hook, a seq from the same CPU (the record keeps its low half), a duration
 * and an offset from the hook's start that fit 32 bits, and a free slot.
 */
static __always_inline bool carry_cb(struct hstate *h, struct cstate *c, u64 dur, s32 ret)
{
	u8 n = h->ncarried;
	u64 off = c->ts - h->ts;	/* (a callback begun before its hook: huge, not carried) */

	if (!h->active || n >= MMNT_REC_CBS || c->mm != h->mm || c->start != h->start || c->end != h->end ||
	    c->event != h->event || (c->seq >> 32) != (h->seq >> 32) || dur > 0xffffffffULL || off > 0xffffffffULL)
		return false;
	h->ncarried = n + 1;
	n &= MMNT_REC_CBS - 1;
	h->cb_func[n] = c->func;
	h->cb_ts[n] = off;
	h->cb_dur[n] = dur;
	h->cb_pc[n] = c->pc;
	h->cb_ret[n] = ret;
	h->cb_seq[n] = (u32)c->seq;
	h->cb_hook[n] = c->hook;
	h->cb_flags[n] = c->flags;
	h->cb_rt[n] = c->rt;
	return true;
}
#endif

/*
 * A callback ends: its exit program's first step (own_probe), or, chained
 * (MMNT_CHAIN), the next callback's entry program's first step or its hook's
 * return program's; rc is then unknown (0), which --aggregate never reads.
 * The time spent here is the hook's nested_ns: added here for an exit
 * program; a chained end is inside the next entry program's own measured
 * time, or after the hook's end.
 */
static __always_inline void cb_end(void *ctx, struct tstate *t, u64 now, u64 rc, bool own_probe)
{
	struct cstate *c = &t->c;
	u32 hook = c->hook;
	u64 dur = now - c->ts;
	c->active = 0;
	if (c->flags & MMNT_FL_MUST_NOT_SLEEP) {
		nosleep_add(-1);
		section_return(ctx, t, true, now);
	}
	if (hook == MMNT_HOOK_CALIB)
		goto out;		/* the calibration's inner function: its time is its hook's */
#ifdef MMNT_AGGREGATE
	aggregate(c->series, c->event, dur);
	count_via(c->series, t->h.active ? t->h.hook : MMNT_HOOK_NONE);
#else
#ifdef MMNT_MIN_LAT_NS
	aggregate(c->series, c->event, dur);
	count_via(c->series, t->h.active ? t->h.hook : MMNT_HOOK_NONE);
	if (dur < MMNT_MIN_LAT_NS)
		goto out;
#endif
	s32 ret = cb_ret(hook, rc);
#ifdef MMNT_CARRY
	if (carry_cb(&t->h, c, dur, ret))
		goto out;			/* its hook's record will carry it */
#endif
	REC_BEGIN(r, MMNT_REC_CALLBACK, goto out);
	REC_FROM_STATE(r, c);
	r->ret = ret;
	r->stack_id = c->stack_id;
	r->ts_ns = c->ts;
	r->dur_ns = dur;
	r->func = c->func;
	if (t->h.active) {		/* the entry point that made this call, and its invocation */
		r->kind = t->h.hook;	/* (6.1's range_end calls invalidate_range ops itself) */
		r->addr = t->h.seq;
	} else {
		r->kind = MMNT_HOOK_NONE;
	}
	REC_SEND(ctx, r);
#endif
out:
	if (own_probe && t->h.active)
		t->h.nested_ns += bpf_ktime_get_ns() - now;
}

static __always_inline int cb_return_body(void *ctx, u64 now, u64 rc)
{
	struct tstate *t = tstate_get(false);

	if (!t || !t->c.active)
		return 0;
	cb_end(ctx, t, now, rc, true);
	tstate_put(t);
	return 0;
}

int cb_entry(struct pt_regs *ctx)
{
	u64 t0 = bpf_ktime_get_ns(), ip = bpf_get_func_ip(ctx), ck = KP_COOKIE(ctx);
	struct cbinfo ci;
	if (ck & MMNT_COOKIE_VALID) {
		/* the address's upper half is the probed one's (ip: the function,
		 * or 4 bytes on with IBT on some kernels) */
		cbinfo_unpack(&ci, (ip & 0xffffffff00000000ULL) | (u32)ck, ck);
	} else {
		struct cbinfo *m = cb_info.lookup(&ip);	/* one program on every callback */
		if (!m)
			return 0;
		ci = *m;
	}
	return cb_entry_body(ctx, t0, &ci, PT_REGS_PARM2(ctx), PT_REGS_PARM3(ctx),
			     PT_REGS_PARM4(ctx), KP_IRQS_OFF(ctx), PT_REGS_SP(ctx));
}

int cb_return(struct pt_regs *ctx)
{
	u64 now = bpf_ktime_get_ns();	/* first: our own work is not the callback's */
	return cb_return_body(ctx, now, PT_REGS_RC(ctx));
}

#ifdef MMNT_FENTRY	/* the fentry backend's programs: not compiled for kprobes */
/* bpf_get_func_arg/_ret (5.17+): the argument count is checked at run time,
 * so one program serves every op whatever its arity */
static long (*mmnt_func_arg)(void *ctx, u32 n, u64 *value) = (void *)183;
static long (*mmnt_func_ret)(void *ctx, u64 *value) = (void *)184;

/*
 * The callback this copy serves: two 64-bit immediates that fentry.py sets,
 * per copy, to its struct cbinfo (cb_info's entry for the function): no map
 * lookup per call, and the verifier walks only its hook's paths, as
 * hook_const() below does for the hooks.
 */
static __always_inline void cb_const(struct cbinfo *ci)
{
	u64 f, i;
	asm volatile("%0 = " MMNT_STR(MMNT_CB_FUNC_IMM) " ll" : "=r"(f));
	asm volatile("%0 = " MMNT_STR(MMNT_CB_INFO_IMM) " ll" : "=r"(i));
	cbinfo_unpack(ci, f, i);
}

int cbf_entry(u64 *ctx)
{
	u64 t0 = bpf_ktime_get_ns(), a2 = 0, a3 = 0, a4 = 0;
	struct cbinfo ci;
	cb_const(&ci);
	mmnt_func_arg(ctx, 1, &a2);
	mmnt_func_arg(ctx, 2, &a3);
	mmnt_func_arg(ctx, 3, &a4);
	return cb_entry_body(ctx, t0, &ci, a2, a3, a4, IRQS_UNKNOWN, 0);
}

int cbf_exit(u64 *ctx)
{
	u64 now = bpf_ktime_get_ns(), rc = 0;
	mmnt_func_ret(ctx, &rc);
	return cb_return_body(ctx, now, rc);
}

/*
 * The fentry flavour of the hooks: one program pair, which tracer.py loads
 * on each hook function through mmntrace/bpfsys.py as it does cbf_entry for
 * callbacks, each copy with its hook's id in it (hook_const). bcc's KFUNC_PROBE
 * needed one generated pair per hook, each a copy of the bodies: 15 s more of
 * every start in the lab than the kprobe backend.
 */
/*
 * The hook this copy serves: a 64-bit immediate that fentry.py sets to the
 * hook id of the function it loads the copy on. The verifier then knows it,
 * and walks only that hook's paths (a hook id read from hook_ip made it walk
 * every hook's: 132,000-140,000 instructions and about a second per load in
 * the lab's 6.12 guest, fourteen loads).
 */
static __always_inline u32 hook_const(void)
{
	u64 h;
	asm volatile("%0 = " MMNT_STR(MMNT_HOOK_IMM) " ll" : "=r"(h));
	return (u32)h;
}

int hkf_entry(u64 *ctx)
{
	u64 a1 = 0, a2 = 0, a3 = 0;

	mmnt_func_arg(ctx, 0, &a1);
	mmnt_func_arg(ctx, 1, &a2);
	mmnt_func_arg(ctx, 2, &a3);
	return hook_entry(ctx, hook_const(), a1, a2, a3, IRQS_UNKNOWN, false);
}

int hkf_exit(u64 *ctx)
{
	u64 now = bpf_ktime_get_ns(), rc = 0;

	mmnt_func_ret(ctx, &rc);	/* read only for the hooks that return a value */
	return hook_return(ctx, now, hook_const(), rc, 0);	/* matches its own hook's entry only */
}
#endif /* MMNT_FENTRY */

#if defined(MMNT_FENTRY) && defined(MMNT_MIGHT_SLEEP)
/* might-sleep functions, fentry flavour: loaded on each like hkf_entry */
int msf_entry(u64 *ctx)
{
	u32 z = 0;
	s64 *n = nosleep.lookup(&z);
	if (!n || *n <= 0)
		return 0;
	u64 ip = bpf_get_func_ip(ctx), a1 = 0, a2 = 0;
	struct cbinfo *si = sleeper_info.lookup(&ip);
	if (!si)
		return sleep_hit(ctx, MMNT_SLEEP_MIGHT, ip, 0);
	mmnt_func_arg(ctx, 0, &a1);
	mmnt_func_arg(ctx, 1, &a2);
	return might_sleep_hit(ctx, si->func, si->hook, a1, a2, 0);
}
#endif

/*
 * A task scheduled out voluntarily inside a must-not-sleep section. Two ways
 * in, the same test: the raw tracepoint (its arguments as the kernel passes
 * them: no perf record is built and copied for every context switch of the
 * machine, which the pipe ping-pong of the ambient benchmark pays), on
 * kernels whose sched_switch carries prev_state (5.18+, tracer.py checks the
 * BTF); else the perf tracepoint, whose prev_state is the reported state
 * index (TASK_REPORT_MAX when preempted).
 */
#ifndef MMNT_SLEEP_COUNT	/* else sleep.h's section_return() sees them */
#ifdef MMNT_RAW_SWITCH
RAW_TRACEPOINT_PROBE(sched_switch)
{
	/* (bool preempt, struct task_struct *prev, struct task_struct *next, unsigned int prev_state) */
	u32 z = 0;
	s64 *n = nosleep.lookup(&z);
	if (!n || *n <= 0)
		return 0;
	if ((u8)ctx->args[0] || (u32)ctx->args[3] == 0)	/* preempted, or still running */
		return 0;
	return sleep_hit(ctx, MMNT_SLEEP_SWITCH, 0, 0);
}
#endif

TRACEPOINT_PROBE(sched, sched_switch)
{
	u32 z = 0;
	s64 *n = nosleep.lookup(&z);
	if (!n || *n <= 0)
		return 0;
	u64 st = (u64)args->prev_state;
	if (st == 0 || st == MMNT_L_TASK_REPORT_MAX)	/* running, or preempted */
		return 0;
	return sleep_hit(args, MMNT_SLEEP_SWITCH, 0, 0);
}
#endif /* MMNT_SLEEP_COUNT */


#ifdef MMNT_FILTER_TREE
/* In the parent's context (kernel_clone): a new process (not a thread) of a
 * traced one is traced too. Full table: counted, as a drop. */
RAW_TRACEPOINT_PROBE(sched_process_fork)
{
	/* (struct task_struct *parent, struct task_struct *child) */
	u32 ptgid = bpf_get_current_pid_tgid() >> 32, ctgid = 0;
	u8 one = 1;

	if (!filter_tgids.lookup(&ptgid))
		return 0;
	bpf_probe_read_kernel(&ctgid, sizeof(ctgid), (void *)(ctx->args[1] + MMNT_L_TASK_TGID));
	if (ctgid && ctgid != ptgid && filter_tgids.update(&ctgid, &one) != 0)
		count_drop(MMNT_DROP_FOLLOW);
	return 0;
}

/* A process's leader freed (all its threads gone, RCU-delayed): its number
 * may be given to an unrelated process from now on */
RAW_TRACEPOINT_PROBE(sched_process_free)
{
	/* (struct task_struct *p) */
	u32 pid = 0, tgid = 0;

	bpf_probe_read_kernel(&pid, sizeof(pid), (void *)(ctx->args[0] + MMNT_L_TASK_PID));
	bpf_probe_read_kernel(&tgid, sizeof(tgid), (void *)(ctx->args[0] + MMNT_L_TASK_TGID));
	if (pid == tgid)
		filter_tgids.delete(&tgid);
	return 0;
}
#endif

/*
 * A module was loaded. Its ops tables may sit where an unloaded module's did
 * (a driver reloaded lands at the same address), and the probes on the old
 * callbacks died with it: a new generation makes every ops table and mm count
 * as not seen, so each table is reported again as its mm is next touched,
 * hooks count untimed calls until user space has re-probed (probing_pending),
 * and user space, seeing the generation move, checks its modules at once.
 * Raw tracepoint where it attaches, else the perf one.
 */
static __always_inline int module_loaded(void)
{
	u32 z = 0, *g = walk_gen.lookup(&z);
	if (g)
		__sync_fetch_and_add(g, 1);
	return 0;
}

RAW_TRACEPOINT_PROBE(module_load)
{
	return module_loaded();
}

TRACEPOINT_PROBE(module, module_load)
{
	return module_loaded();
}


/* ---- (un)registration --------------------------------------------------------- */

static __always_inline void emit_register(void *ctx, u8 hook, u8 flags, u64 sub, u64 mm, u64 start, u64 end)
{
	struct mmnt_record r = {};
	fill_common(&r, MMNT_REC_REGISTER);
	r.hook = hook;
	r.flags = flags;
	r.event = -1;
	r.stack_id = -1;
	r.ts_ns = bpf_ktime_get_ns();
	r.addr = sub;
	r.mm = mm;
	r.start = start;
	r.end = end;
	emit(ctx, &r);
}

/* __mmu_notifier_register(subscription, mm); subscription is NULL for interval-only mms */
int reg_register(struct pt_regs *ctx)
{
	u64 sub = PT_REGS_PARM1(ctx), mm = PT_REGS_PARM2(ctx), ops = 0;
	if (!sub)
		return 0;
	bpf_probe_read_kernel(&ops, sizeof(ops), (void *)(sub + MMNT_L_SUB_OPS));
	emit_ops(ctx, ops, mm);
	emit_register(ctx, MMNT_HOOK_NONE, 0, sub, mm, ops, 0);
	return 0;
}

/* mmu_notifier_unregister(subscription, mm): it calls ops->release itself */
int reg_unregister(struct pt_regs *ctx)
{
	emit_register(ctx, MMNT_HOOK_NONE, MMNT_FL_UNREGISTER, PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), 0, 0);
	if (pass_filter())
		unregister_counts_release(PT_REGS_PARM1(ctx));
	return 0;
}

/* mmu_interval_notifier_insert[_locked](interval_sub, mm, start, length, ops) */
int reg_insert(struct pt_regs *ctx)
{
	u64 sub = PT_REGS_PARM1(ctx), mm = PT_REGS_PARM2(ctx), start = PT_REGS_PARM3(ctx);
	u64 len = PT_REGS_PARM4(ctx), ops = PT_REGS_PARM5(ctx);
	emit_interval_ops(ctx, ops, mm);
	emit_register(ctx, MMNT_HOOK_INTERVAL, 0, sub, mm, start, start + len);
	return 0;
}

int reg_remove(struct pt_regs *ctx)
{
	u64 sub = PT_REGS_PARM1(ctx), mm = 0;
	bpf_probe_read_kernel(&mm, sizeof(mm), (void *)(sub + MMNT_L_ISUB_MM));
	emit_register(ctx, MMNT_HOOK_INTERVAL, MMNT_FL_UNREGISTER, sub, mm, 0, 0);
	return 0;
}

/* ---- calibration: the probe's own preempt_count, seen on getppid ---------------- */

static __always_inline int calib_hit(int irqs_off, u32 base)
{
	u32 raw = 0, k;
	if ((bpf_get_current_pid_tgid() >> 32) != MMNT_SELF_TGID)
		return 0;
	if (!read_pc(irqs_off, &raw))
		return 0;
	k = base + 1;
	u32 *lo = calib.lookup(&k);	/* user space starts it at ~0: keep the minimum */
	if (lo && raw < *lo)
		*lo = raw;
#ifdef MMNT_RT
	u32 md = 0, rcu = 0;
	read_rt(&md, &rcu);
	k = base == CALIB_FENTRY ? CALIB_RT_FENTRY : CALIB_RT_KPROBE;
	lo = calib.lookup(&k);
	if (lo && md < *lo)
		*lo = md;
	k++;
	lo = calib.lookup(&k);
	if (lo && rcu < *lo)
		*lo = rcu;
#endif
	k = base + 2;
	u32 *hits = calib.lookup(&k);
	if (hits)
		__sync_fetch_and_add(hits, 1);
	if (irqs_off > 0) {
		k = base + 3;
		u32 *irq = calib.lookup(&k);
		if (irq)
			__sync_fetch_and_add(irq, 1);
	}
	return 0;
}

int calib_entry(struct pt_regs *ctx) { return calib_hit(KP_IRQS_OFF(ctx), CALIB_KPROBE); }
#ifdef MMNT_FENTRY
int calib_fentry(u64 *ctx) { return calib_hit(IRQS_UNKNOWN, CALIB_FENTRY); }	/* loaded on getppid */
#endif


