// SPDX-License-Identifier: GPL-2.0
/*
 * mmntrace kernel side (bcc C). Compiled once by mmntrace/tracer.py with
 * -I<repo>/bpf and these -D constants (so the verifier prunes what is off):
 *
 *   MMNT_RINGBUF (0/1), MMNT_RINGBUF_PAGES    transport
 *   MMNT_FILTER_PID (tgid), MMNT_FILTER_COMM ("name")   filters, optional
 *   MMNT_SELF_TGID                            the tracer (calibration probe)
 *   MMNT_PC_ADDR, MMNT_PCPU_OFF_ADDR          per-cpu preempt_count, __per_cpu_offset (0: unknown)
 *   MMNT_SUBS_LIST_OFF                        offsetof(struct mmu_notifier_subscriptions, list), -1: unknown
 *   MMNT_HAVE_OP_INVALIDATE_RANGE / _ARCH_SECONDARY / _CHANGE_PTE   ops members present
 *   MMNT_GFP_DIRECT_RECLAIM                   __GFP_DIRECT_RECLAIM value (BTF or header)
 *   MMNT_AGGREGATE                            durations into in-kernel histograms
 *   MMNT_BTF_LAYOUT, MMNT_L_*                 struct layouts from BTF (else the headers give them)
 *
 * Programs (attached by user space):
 *   hk_entry_N / hk_return_N   kprobe/kretprobe on hook N's kernel entry point
 *   cb_entry / cb_return       every discovered driver op (cb_info gives its hook)
 *   ms_entry                   might-sleep functions; sched_switch tracepoint
 *   reg_*                      (un)registration, ops discovery
 *   calib_entry                getppid, to measure the probe's own preempt_count
 *
 * With the fentry backend tracer.py appends KFUNC_PROBE/KRETFUNC_PROBE programs
 * for each hook, might-sleep function and getppid (vmlinux functions that
 * have BTF) which call the same bodies. Driver callbacks live in modules,
 * and bcc 0.26 binds trampolines to vmlinux BTF only: they stay kprobes.
 */
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
#ifdef MMNT_HAVE_OP_ARCH_SECONDARY
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
BPF_PERCPU_ARRAY(drops, u64, 8);		/* by record type */
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

static __always_inline s32 get_stack_id(void *ctx)
{
	u32 z = 0, nid;
	struct stack_key *k = stack_scratch.lookup(&z);
	u32 *id, *next;

	if (!k)
		return -1;
	/* bpf_get_stack zero-fills the rest of the buffer */
	if (bpf_get_stack(ctx, k->ip, sizeof(k->ip), 0) < 0)
		return -2;
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

struct hstate {				/* a hook in progress, per tid */
	u64 ts, mm, start, end, seq;
	s32 event, stack_id;
	u32 pc;
	u8 hook, flags, pad[2];
};
BPF_HASH(hook_state, u32, struct hstate, 10240);

struct cstate {				/* a callback in progress, per tid */
	u64 ts, mm, start, end, seq, func;
	s32 event, stack_id;
	u32 pc;
	u8 hook, flags, pad[2];
};
BPF_HASH(cb_state, u32, struct cstate, 10240);

struct cbinfo {
	u64 func;			/* canonical function address */
	u32 hook;			/* enum mmnt_hook; sleepers: gfp arg index (0 = always) */
	u32 pad;
};
BPF_HASH(cb_info, u64, struct cbinfo, 4096);	/* probe address (addr, addr+4) -> op */
BPF_HASH(sleeper_info, u64, struct cbinfo, 256);	/* might-sleep function -> gfp arg */
BPF_HASH(seen_ops, u64, u8, 4096);		/* ops tables already reported */
BPF_TABLE("lru_hash", u64, u8, seen_mm, 4096);		/* mms whose subscriptions were walked */
BPF_ARRAY(nosleep, s64, 1);			/* must-not-sleep sections active, all CPUs */
/* Calibration, per mechanism (a kprobe handler runs with preemption off, a
 * trampoline need not): [base+0] preempt offset, [+1] lowest raw seen,
 * [+2] hits, [+3] hits with IRQs off; base CALIB_KPROBE or CALIB_FENTRY. */
#define CALIB_KPROBE 0
#define CALIB_FENTRY 4
BPF_ARRAY(calib, u32, 8);
BPF_PERCPU_ARRAY(seqs, u64, 1);
BPF_ARRAY(sampling, u32, 1);			/* trace 1 hook invocation in N (0, 1: all) */
BPF_PERCPU_ARRAY(sample_ctr, u64, 1);

#ifdef MMNT_AGGREGATE
struct tot_key {
	u64 func;
	u32 hook;
	s32 event;
};
struct tot_val {
	u64 count, sum_ns;
};
BPF_HASH(hist, struct mmnt_hist_key, u64, 16384);
BPF_HASH(totals, struct tot_key, struct tot_val, 4096);
#endif

/* ---- helpers -------------------------------------------------------------- */

static __always_inline void count_drop(u32 type)
{
	u64 *d = drops.lookup(&type);
	if (d)
		(*d)++;
}

static __always_inline void emit(void *ctx, struct mmnt_record *r)
{
#if MMNT_RINGBUF
	if (events.ringbuf_output(r, sizeof(*r), 0) != 0)
		count_drop(r->type);
#else
	if (events.perf_submit(ctx, r, sizeof(*r)) != 0)
		count_drop(r->type);
#endif
}

static __always_inline bool pass_filter(u32 tgid)
{
#ifdef MMNT_FILTER_PID
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

static __always_inline u64 next_seq(void)
{
	u32 z = 0;
	u64 *p = seqs.lookup(&z);
	u64 n = 0;
	if (p)
		n = ++(*p);
	return ((u64)bpf_get_smp_processor_id() << 48) | n;
}

static __always_inline void nosleep_add(s64 v)
{
	u32 z = 0;
	s64 *p = nosleep.lookup(&z);
	if (p)
		__sync_fetch_and_add(p, v);
}

/* Raw preempt_count of this CPU, masked; returns false if unreadable. */
static __always_inline bool read_pc(u32 *out)
{
#if MMNT_PC_ADDR && MMNT_PCPU_OFF_ADDR
	u64 base = 0;
	u32 raw = 0;
	u64 cpu = bpf_get_smp_processor_id();
	if (bpf_probe_read_kernel(&base, sizeof(base), (void *)(MMNT_PCPU_OFF_ADDR + cpu * 8)))
		return false;
	if (bpf_probe_read_kernel(&raw, sizeof(raw), (void *)(base + (u64)MMNT_PC_ADDR)))
		return false;
	*out = raw & MMNT_PC_MASK;
	return true;
#else
	return false;
#endif
}

/* IRQ state at entry: 1 disabled, 0 enabled, -1 unknown (fentry: no saved flags). */
#define KP_IRQS_OFF(ctx) (!((ctx)->flags & X86_EFLAGS_IF))
#define IRQS_UNKNOWN (-1)

/* preempt_count (calibrated) and IRQ state at entry, into pc/flags. */
static __always_inline void entry_context(int irqs_off, u32 *pc, u8 *flags)
{
	/* only fentry programs cannot see the IRQ state */
	u32 raw = 0, z = irqs_off < 0 ? CALIB_FENTRY : CALIB_KPROBE;
	if (read_pc(&raw)) {
		u32 *off = calib.lookup(&z);
		u32 o = off ? *off : 0;
		*pc = raw >= o ? raw - o : 0;
		if (*pc)
			*flags |= MMNT_FL_ATOMIC;
	} else {
		*flags |= MMNT_FL_PC_UNKNOWN;
	}
	if (irqs_off < 0)
		*flags |= MMNT_FL_IRQ_UNKNOWN;
	else if (irqs_off)
		*flags |= MMNT_FL_IRQS_OFF;
}

/* Copy range fields; sets event and the blockable flag. */
static __always_inline void read_range(u64 range, u64 *mm, u64 *start, u64 *end, s32 *event, u8 *flags)
{
	union { u8 b[64]; u64 q[8]; } r = {};
	if (bpf_probe_read_kernel(&r, MMNT_L_RANGE_SIZE < sizeof(r) ? MMNT_L_RANGE_SIZE : sizeof(r), (void *)range))
		return;
	*mm = *(u64 *)&r.b[MMNT_L_RANGE_MM];
	*start = *(u64 *)&r.b[MMNT_L_RANGE_START];
	*end = *(u64 *)&r.b[MMNT_L_RANGE_END];
	*event = *(s32 *)&r.b[MMNT_L_RANGE_EVENT];
	if (!(*(u32 *)&r.b[MMNT_L_RANGE_FLAGS] & MMU_NOTIFIER_RANGE_BLOCKABLE))
		*flags &= ~MMNT_FL_BLOCKABLE;
}

static __always_inline bool hook_forbids_sleep(u32 hook, u8 flags)
{
	if (hook == MMNT_HOOK_SECONDARY_TLB || hook == MMNT_HOOK_CHANGE_PTE ||
	    hook == MMNT_HOOK_CLEAR_FLUSH_YOUNG || hook == MMNT_HOOK_CLEAR_YOUNG ||
	    hook == MMNT_HOOK_TEST_YOUNG)
		return true;
	if (flags & (MMNT_FL_ATOMIC | MMNT_FL_IRQS_OFF))
		return true;
	if ((hook == MMNT_HOOK_START || hook == MMNT_HOOK_END || hook == MMNT_HOOK_INTERVAL) &&
	    !(flags & MMNT_FL_BLOCKABLE))
		return true;
	return false;
}

static __always_inline void fill_common(struct mmnt_record *r, u8 type)
{
	u64 id = bpf_get_current_pid_tgid();
	r->type = type;
	r->cpu = bpf_get_smp_processor_id();
	r->pid = id >> 32;
	r->tid = (u32)id;
	bpf_get_current_comm(&r->comm, sizeof(r->comm));
}

/* ---- discovery ------------------------------------------------------------ */

/* Hook of the ops-table slot at byte offset off, -1 if not an op we know. */
static __always_inline int op_hook_at(u32 off)
{
	if (off == MMNT_L_OPS_release)
		return MMNT_HOOK_RELEASE;
	if (off == MMNT_L_OPS_clear_flush_young)
		return MMNT_HOOK_CLEAR_FLUSH_YOUNG;
	if (off == MMNT_L_OPS_clear_young)
		return MMNT_HOOK_CLEAR_YOUNG;
	if (off == MMNT_L_OPS_test_young)
		return MMNT_HOOK_TEST_YOUNG;
	if (off == MMNT_L_OPS_invalidate_range_start)
		return MMNT_HOOK_START;
	if (off == MMNT_L_OPS_invalidate_range_end)
		return MMNT_HOOK_END;
#ifdef MMNT_HAVE_OP_INVALIDATE_RANGE
	if (off == MMNT_L_OPS_invalidate_range)
		return MMNT_HOOK_SECONDARY_TLB;
#endif
#ifdef MMNT_HAVE_OP_ARCH_SECONDARY
	if (off == MMNT_L_OPS_arch_invalidate_secondary_tlbs)
		return MMNT_HOOK_SECONDARY_TLB;
#endif
#ifdef MMNT_HAVE_OP_CHANGE_PTE
	if (off == MMNT_L_OPS_change_pte)
		return MMNT_HOOK_CHANGE_PTE;
#endif
	return -1;
}

/* One OPS record per implemented op of an mmu_notifier_ops table (once per table). */
static __always_inline void emit_ops(void *ctx, u64 ops, u64 mm)
{
	u8 one = 1;
	u64 slots[MMNT_OPS_SLOTS] = {};
	u32 n = MMNT_L_OPS_SIZE / 8;
	struct mmnt_record r = {};

	if (!ops || seen_ops.insert(&ops, &one) != 0)
		return;
	if (n > MMNT_OPS_SLOTS)
		n = MMNT_OPS_SLOTS;
	if (bpf_probe_read_kernel(&slots, MMNT_L_OPS_SIZE < sizeof(slots) ?
				  MMNT_L_OPS_SIZE : sizeof(slots), (void *)ops))
		return;
	fill_common(&r, MMNT_REC_OPS);
	r.event = -1;
	r.stack_id = -1;
	r.mm = mm;
	r.addr = ops;
	r.ts_ns = bpf_ktime_get_ns();
	r.kind = n;
/* a bounded loop, not unrolled: unrolled, the walk (subscriptions x ops
	 * slots) was copied into every hook program and doubled the compile time */
#pragma clang loop unroll(disable)
	for (u32 i = 0; i < MMNT_OPS_SLOTS; i++) {
		if (i >= n)
			break;
		int h = op_hook_at(i * 8);
		if (h < 0 || !slots[i])
			continue;
		r.hook = h;
		r.func = slots[i];
		emit(ctx, &r);
	}
}

static __always_inline void emit_interval_ops(void *ctx, u64 ops, u64 mm)
{
	u8 one = 1;
	u64 invalidate = 0;
	struct mmnt_record r = {};

	if (!ops || seen_ops.insert(&ops, &one) != 0)
		return;
	if (bpf_probe_read_kernel(&invalidate, sizeof(invalidate), (void *)(ops + MMNT_L_IOPS_INVALIDATE)) || !invalidate)
		return;
	fill_common(&r, MMNT_REC_OPS);
	r.event = -1;
	r.stack_id = -1;
	r.mm = mm;
	r.addr = ops;
	r.ts_ns = bpf_ktime_get_ns();
	r.kind = 1;
	r.hook = MMNT_HOOK_INTERVAL;
	r.func = invalidate;
	emit(ctx, &r);
}

/* Walk mm->notifier_subscriptions->list once per mm (bounded). */
static __always_inline void walk_subs(void *ctx, u64 mm)
{
#if MMNT_SUBS_LIST_OFF >= 0
	u8 one = 1;
	u64 subs = 0, node = 0;

	if (!mm || seen_mm.lookup(&mm))
		return;
	seen_mm.update(&mm, &one);
	if (bpf_probe_read_kernel(&subs, sizeof(subs),
				  (void *)(mm + MMNT_L_MM_SUBS)) || !subs)
		return;
	if (bpf_probe_read_kernel(&node, sizeof(node), (void *)(subs + MMNT_SUBS_LIST_OFF)))
		return;
#pragma clang loop unroll(disable)
	for (int i = 0; i < MMNT_MAX_SUBS; i++) {
		u64 ops = 0;
		if (!node)
			break;
		u64 sub = node - MMNT_L_SUB_HLIST;
		bpf_probe_read_kernel(&ops, sizeof(ops), (void *)(sub + MMNT_L_SUB_OPS));
		emit_ops(ctx, ops, mm);
		if (bpf_probe_read_kernel(&node, sizeof(node), (void *)node))
			break;
	}
#endif
}

/* ---- hooks ---------------------------------------------------------------- */

/* The daemon's event budget: true when this hook invocation is not sampled. */
static __always_inline bool sampled_out(void)
{
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
 */
static __always_inline int hook_entry(void *ctx, u32 hook, u64 a1, u64 a2, u64 a3, int irqs_off)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = (u32)id;
	struct hstate s = {};

	if (!pass_filter(id >> 32))
		return 0;
	if (sampled_out()) {
		/* remembered, so that its callbacks are skipped too */
		struct hstate *old = hook_state.lookup(&tid);
		if (old && (old->flags & MMNT_FL_MUST_NOT_SLEEP))
			nosleep_add(-1);
		s.hook = hook;
		s.flags = MMNT_FL_SKIP;
		hook_state.update(&tid, &s);
		return 0;
	}
	s.ts = bpf_ktime_get_ns();
	s.hook = hook;
	s.event = -1;
	s.flags = MMNT_FL_BLOCKABLE;
	if (hook == MMNT_HOOK_START || hook == MMNT_HOOK_END) {
		read_range(a1, &s.mm, &s.start, &s.end, &s.event, &s.flags);
	} else if (hook == MMNT_HOOK_INTERVAL) {
		read_range(a2, &s.mm, &s.start, &s.end, &s.event, &s.flags);
	} else if (hook == MMNT_HOOK_TEST_YOUNG || hook == MMNT_HOOK_CHANGE_PTE) {
		s.mm = a1;
		s.start = a2;
		s.end = s.start + PAGE_SIZE;
	} else if (hook == MMNT_HOOK_RELEASE) {
		s.mm = a1;
	} else {
		s.mm = a1;
		s.start = a2;
		s.end = a3;
	}
	entry_context(irqs_off, &s.pc, &s.flags);
	if (hook_forbids_sleep(hook, s.flags)) {
		s.flags |= MMNT_FL_MUST_NOT_SLEEP;
		nosleep_add(1);
	}
#ifdef MMNT_AGGREGATE
	s.stack_id = -1;	/* no hook record is sent: skip the unwind (the costliest step) */
#else
	s.stack_id = get_stack_id(ctx);
#endif
	s.seq = next_seq();
	walk_subs(ctx, s.mm);
	struct hstate *old = hook_state.lookup(&tid);
	if (old && (old->flags & MMNT_FL_MUST_NOT_SLEEP))
		nosleep_add(-1);	/* nested hook: the outer one is forgotten */
	hook_state.update(&tid, &s);
	return 0;
}

#ifdef MMNT_AGGREGATE
static __always_inline void aggregate(u64 func, u32 hook, s32 event, u64 dur)
{
	struct mmnt_hist_key k = {};
	struct tot_key t = {};
	struct tot_val zero = {}, *tv;
	u32 slot = bpf_log2l(dur);

	if (slot >= MMNT_NR_SLOTS)
		slot = MMNT_NR_SLOTS - 1;
	k.func = func;
	k.hook = hook;
	k.event = event;
	k.slot = slot;
	hist.increment(k);
	t.func = func;
	t.hook = hook;
	t.event = event;
	tv = totals.lookup_or_try_init(&t, &zero);
	if (tv) {
		__sync_fetch_and_add(&tv->count, 1);
		__sync_fetch_and_add(&tv->sum_ns, dur);
	}
}
#endif

static __always_inline int hook_return(void *ctx, u32 hook, u64 rc)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct hstate *s = hook_state.lookup(&tid);
	struct mmnt_record r = {};

	if (!s || s->hook != hook)
		return 0;
	if (s->flags & MMNT_FL_SKIP) {
		hook_state.delete(&tid);
		return 0;
	}
	u64 now = bpf_ktime_get_ns();
	if (s->flags & MMNT_FL_MUST_NOT_SLEEP)
		nosleep_add(-1);
#ifdef MMNT_AGGREGATE
	aggregate(0, hook, s->event, now - s->ts);
#else
	fill_common(&r, MMNT_REC_HOOK);
	r.hook = hook;
	r.flags = s->flags;
	r.preempt_count = s->pc;
	if (hook == MMNT_HOOK_START || hook == MMNT_HOOK_INTERVAL || hook == MMNT_HOOK_CLEAR_FLUSH_YOUNG ||
	    hook == MMNT_HOOK_CLEAR_YOUNG || hook == MMNT_HOOK_TEST_YOUNG)
		r.ret = (s32)rc;
	r.event = s->event;
	r.stack_id = s->stack_id;
	r.seq = s->seq;
	r.ts_ns = s->ts;
	r.dur_ns = now - s->ts;
	r.mm = s->mm;
	r.start = s->start;
	r.end = s->end;
	emit(ctx, &r);
#endif
	hook_state.delete(&tid);
	return 0;
}

#define HOOK_PROGS(N) \
int hk_entry_##N(struct pt_regs *ctx) \
{ return hook_entry(ctx, N, PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), PT_REGS_PARM3(ctx), KP_IRQS_OFF(ctx)); } \
int hk_return_##N(struct pt_regs *ctx) { return hook_return(ctx, N, PT_REGS_RC(ctx)); }

HOOK_PROGS(0)
HOOK_PROGS(1)
HOOK_PROGS(2)
HOOK_PROGS(3)
HOOK_PROGS(4)
HOOK_PROGS(5)
HOOK_PROGS(6)
HOOK_PROGS(7)
HOOK_PROGS(8)

/* ---- driver callbacks ------------------------------------------------------- */

int cb_entry(struct pt_regs *ctx)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = (u32)id;
	u64 ip = bpf_get_func_ip(ctx);
	struct cbinfo *ci = cb_info.lookup(&ip);
	struct cstate c = {};

	if (!ci || !pass_filter(id >> 32))
		return 0;
	struct hstate *hs = hook_state.lookup(&tid);
	if (hs && (hs->flags & MMNT_FL_SKIP))
		return 0;		/* its hook invocation was not sampled */
	u32 hook = ci->hook;
	c.ts = bpf_ktime_get_ns();
	c.func = ci->func;
	c.hook = hook;
	c.event = -1;
	c.flags = MMNT_FL_BLOCKABLE;
	if (hook == MMNT_HOOK_START || hook == MMNT_HOOK_END || hook == MMNT_HOOK_INTERVAL) {
		read_range(PT_REGS_PARM2(ctx), &c.mm, &c.start, &c.end, &c.event, &c.flags);
	} else {
		struct hstate *h = hook_state.lookup(&tid);
		if (h) {
			c.event = h->event;
			c.flags = h->flags & MMNT_FL_BLOCKABLE;
		}
		c.mm = PT_REGS_PARM2(ctx);
		if (hook == MMNT_HOOK_TEST_YOUNG || hook == MMNT_HOOK_CHANGE_PTE) {
			c.start = PT_REGS_PARM3(ctx);
			c.end = c.start + PAGE_SIZE;
		} else if (hook != MMNT_HOOK_RELEASE) {
			c.start = PT_REGS_PARM3(ctx);
			c.end = PT_REGS_PARM4(ctx);
		}
	}
	entry_context(KP_IRQS_OFF(ctx), &c.pc, &c.flags);
	if (hook_forbids_sleep(hook, c.flags)) {
		c.flags |= MMNT_FL_MUST_NOT_SLEEP;
		nosleep_add(1);
	}
	c.stack_id = -1;
	c.seq = next_seq();
	struct cstate *old = cb_state.lookup(&tid);
	if (old && (old->flags & MMNT_FL_MUST_NOT_SLEEP))
		nosleep_add(-1);
	cb_state.update(&tid, &c);
	return 0;
}

int cb_return(struct pt_regs *ctx)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct cstate *c = cb_state.lookup(&tid);
	struct mmnt_record r = {};

	if (!c)
		return 0;
	u64 now = bpf_ktime_get_ns();
	u32 hook = c->hook;
	if (c->flags & MMNT_FL_MUST_NOT_SLEEP)
		nosleep_add(-1);
#ifdef MMNT_AGGREGATE
	aggregate(c->func, hook, c->event, now - c->ts);
#else
	fill_common(&r, MMNT_REC_CALLBACK);
	r.hook = hook;
	r.flags = c->flags;
	r.preempt_count = c->pc;
	if (hook == MMNT_HOOK_INTERVAL)
		r.ret = (u8)PT_REGS_RC(ctx);		/* bool */
	else if (hook == MMNT_HOOK_START || hook == MMNT_HOOK_CLEAR_FLUSH_YOUNG ||
		 hook == MMNT_HOOK_CLEAR_YOUNG || hook == MMNT_HOOK_TEST_YOUNG)
		r.ret = (s32)PT_REGS_RC(ctx);
	r.event = c->event;
	r.stack_id = c->stack_id;
	r.seq = c->seq;
	r.ts_ns = c->ts;
	r.dur_ns = now - c->ts;
	r.mm = c->mm;
	r.start = c->start;
	r.end = c->end;
	r.func = c->func;
	emit(ctx, &r);
#endif
	cb_state.delete(&tid);
	return 0;
}

/* ---- sleeping inside a must-not-sleep section -------------------------------- */

static __always_inline int sleep_hit(void *ctx, u8 kind, u64 addr)
{
	u32 z = 0;
	s64 *n = nosleep.lookup(&z);
	if (!n || *n <= 0)
		return 0;
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct mmnt_record r = {};
	struct cstate *c = cb_state.lookup(&tid);
	if (c) {
		if (!(c->flags & MMNT_FL_MUST_NOT_SLEEP))
			return 0;
		r.hook = c->hook;
		r.flags = c->flags;
		r.preempt_count = c->pc;
		r.event = c->event;
		r.seq = c->seq;
		r.mm = c->mm;
		r.start = c->start;
		r.end = c->end;
		r.func = c->func;
		r.dur_ns = bpf_ktime_get_ns() - c->ts;
	} else {
		struct hstate *h = hook_state.lookup(&tid);
		if (!h || !(h->flags & MMNT_FL_MUST_NOT_SLEEP))
			return 0;
		r.hook = h->hook;
		r.flags = h->flags;
		r.preempt_count = h->pc;
		r.event = h->event;
		r.seq = h->seq;
		r.mm = h->mm;
		r.start = h->start;
		r.end = h->end;
		r.dur_ns = bpf_ktime_get_ns() - h->ts;
	}
	fill_common(&r, MMNT_REC_SLEEP);
	r.kind = kind;
	r.addr = addr;
	r.ts_ns = bpf_ktime_get_ns();
	r.stack_id = get_stack_id(ctx);
	emit(ctx, &r);
	return 0;
}

/* a might-sleep function was entered; gfp_arg: 0 always counts, else 1/2 = a1/a2's gfp */
static __always_inline int might_sleep_hit(void *ctx, u64 func, u32 gfp_arg, u64 a1, u64 a2)
{
	if (gfp_arg == 1 && !(a1 & MMNT_GFP_DIRECT_RECLAIM))
		return 0;
	if (gfp_arg == 2 && !(a2 & MMNT_GFP_DIRECT_RECLAIM))
		return 0;
	return sleep_hit(ctx, MMNT_SLEEP_MIGHT, func);
}

int ms_entry(struct pt_regs *ctx)
{
	u32 z = 0;
	s64 *n = nosleep.lookup(&z);
	if (!n || *n <= 0)
		return 0;
	u64 ip = bpf_get_func_ip(ctx);
	struct cbinfo *si = sleeper_info.lookup(&ip);
	if (!si)
		return sleep_hit(ctx, MMNT_SLEEP_MIGHT, ip);
	return might_sleep_hit(ctx, si->func, si->hook, PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx));
}

/* fentry flavour: the generated program passes the function and its gfp argument */
static __always_inline int ms_fentry(void *ctx, u64 func, u32 gfp_arg, u64 a1, u64 a2)
{
	u32 z = 0;
	s64 *n = nosleep.lookup(&z);
	if (!n || *n <= 0)
		return 0;
	return might_sleep_hit(ctx, func, gfp_arg, a1, a2);
}

TRACEPOINT_PROBE(sched, sched_switch)
{
	u32 z = 0;
	s64 *n = nosleep.lookup(&z);
	if (!n || *n <= 0)
		return 0;
	u64 st = (u64)args->prev_state;
	if (st == 0 || st == MMNT_L_TASK_REPORT_MAX)	/* running, or preempted */
		return 0;
	return sleep_hit(args, MMNT_SLEEP_SWITCH, 0);
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

int reg_unregister(struct pt_regs *ctx)
{
	emit_register(ctx, MMNT_HOOK_NONE, MMNT_FL_UNREGISTER, PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), 0, 0);
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
	if (!read_pc(&raw))
		return 0;
	k = base + 1;
	u32 *lo = calib.lookup(&k);	/* user space starts it at ~0: keep the minimum */
	if (lo && raw < *lo)
		*lo = raw;
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

/* fentry programs (generated by tracer.py for the running kernel) follow. */
