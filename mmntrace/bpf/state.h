/* SPDX-License-Identifier: GPL-2.0 */
/*
 * mmntrace kernel side: per-call state. Each task has one hook and one callback in
 * progress at most; their entry state lives in task-local storage (or a
 * tid-keyed hash), with the invocation ids and the must-not-sleep count.
 * Included by bpf/mmntrace.bpf.c (bcc C, compiled with -I<repo>/bpf).
 */
#ifndef MMNT_STATE_H
#define MMNT_STATE_H

#define MMNT_HOOK_CBS 8			/* callbacks remembered per hook invocation */

struct hstate {				/* the hook in progress on this task */
	u64 ts, mm, start, end, seq;
	u64 range;			/* start/end: the struct mmu_notifier_range its callbacks get */
	u64 nested_ns;			/* our own probes' time inside it (callbacks) */
	u64 nvcsw;			/* MMNT_SLEEP_COUNT: the task's voluntary switches at entry */
	s32 event, stack_id;
	u32 pc;
	u8 hook, flags, active, ncb;
	u8 pending, only_end;		/* callbacks were being probed when it began; range_end's only_end (before 6.6) */
	u8 rt;				/* MMNT_RT_* at entry (PREEMPT_RT) */
	u8 cb_over;			/* callbacks timed beyond cbs[], put in cb_seen at once */
	u8 expected_at_entry;		/* release: its subscribers' calls counted at entry */
	u8 caller_at_return;		/* streaming: no stack; its return probe names the caller */
	u8 ncarried;			/* MMNT_CARRY: callbacks kept for its record, below */
	u64 cbs[MMNT_HOOK_CBS];		/* callbacks timed inside it (untimed counting) */
#ifdef MMNT_CARRY
	/* its first callbacks, as its record carries them (mmntrace.h cb_*) */
	u64 cb_func[MMNT_REC_CBS];
	u32 cb_ts[MMNT_REC_CBS], cb_dur[MMNT_REC_CBS], cb_pc[MMNT_REC_CBS];
	s32 cb_ret[MMNT_REC_CBS];
	u32 cb_seq[MMNT_REC_CBS];
	u8 cb_hook[MMNT_REC_CBS], cb_flags[MMNT_REC_CBS], cb_rt[MMNT_REC_CBS];
#endif
};

struct cstate {				/* the callback in progress on this task */
	u64 ts, mm, start, end, seq, func;
	u64 nvcsw;			/* MMNT_SLEEP_COUNT: the task's voluntary switches at entry */
	u64 sp;				/* the stack pointer at its entry (a kprobe's; 0: unknown):
					 * the release hook's chain end (rel_sync) */
	s32 event, stack_id;
	u32 pc, series;
	u8 hook, flags, active, rt;	/* rt: MMNT_RT_* at entry (PREEMPT_RT) */
	u8 chained;			/* MMNT_CHAIN: no exit probe; the next entry or the hook's return ends it */
	u8 pad8[7];
};

struct tstate {
	struct hstate h;
	struct cstate c;
	u64 walked_mm;			/* the mm this task last walked (walk_subs) ... */
	u32 walked_gen;			/* ... in this generation of seen_mm */
	u32 pad;
};

#ifdef MMNT_TASK_STORAGE
/*
 * Per-task state in task-local storage: no hash, no insert or delete per
 * call (the first access allocates; entries are reused and freed with the
 * task). Kernels whose kprobe programs cannot use it get a tid-keyed hash.
 */
BPF_TASK_STORAGE(task_state, struct tstate);

static __always_inline struct tstate *tstate_get(bool create)
{
	return task_state.task_storage_get(bpf_get_current_task_btf(), 0,
					   create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
}

static __always_inline void tstate_put(struct tstate *t) {}
#else
BPF_HASH(task_state, u32, struct tstate, 10240);

static __always_inline struct tstate *tstate_get(bool create)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct tstate *t = task_state.lookup(&tid);
	if (!t && create) {
		struct tstate z = {};
		task_state.update(&tid, &z);
		t = task_state.lookup(&tid);
	}
	return t;
}

/* nothing in progress on this task any more: give the entry back */
static __always_inline void tstate_put(struct tstate *t)
{
	if (!t->h.active && !t->c.active) {
		u32 tid = (u32)bpf_get_current_pid_tgid();
		task_state.delete(&tid);
	}
}
#endif

BPF_ARRAY(nosleep, s64, 1);			/* must-not-sleep sections active, all CPUs */
BPF_PERCPU_ARRAY(seqs, u64, 1);

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
#if defined(MMNT_SLEEP_COUNT) && !defined(MMNT_MIGHT_SLEEP)
	return;			/* read by sched_switch and might-sleep programs only: none here */
#endif
	u32 z = 0;
	s64 *p = nosleep.lookup(&z);
	if (p)
		__sync_fetch_and_add(p, v);
}

#endif /* MMNT_STATE_H */
