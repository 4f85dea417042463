/* SPDX-License-Identifier: GPL-2.0 */
/*
 * mmntrace kernel side: sleeping, or calling what may sleep, inside a
 * must-not-sleep section (sched_switch, might-sleep functions).
 * Included by bpf/mmntrace.bpf.c (bcc C, compiled with -I<repo>/bpf).
 */
#ifndef MMNT_SLEEP_H
#define MMNT_SLEEP_H

BPF_HASH(sleeper_info, u64, struct cbinfo, 256);	/* might-sleep function -> gfp arg */


/* The section a sleep record describes: the callback in progress, else its hook */
static __always_inline void fill_section(struct mmnt_record *r, struct tstate *t, bool cb, u64 now)
{
	if (cb) {
		REC_FROM_STATE(r, &t->c);
		r->func = t->c.func;
		r->dur_ns = now - t->c.ts;
	} else {
		REC_FROM_STATE(r, &t->h);
		r->dur_ns = now - t->h.ts;
	}
}

/* lr: the link register at a kprobe on a might-sleep function's entry (arm64;
 * 0 elsewhere): the callback that called it, which the unwinder misses */
static __always_inline int sleep_hit(void *ctx, u8 kind, u64 addr, u64 lr)
{
	u32 z = 0;
	s64 *n = nosleep.lookup(&z);
	if (!n || *n <= 0)
		return 0;
	struct tstate *t = tstate_get(false);
	if (!t)
		return 0;
	bool cb = t->c.active;
	if (cb ? !(t->c.flags & MMNT_FL_MUST_NOT_SLEEP) : !(t->h.active && (t->h.flags & MMNT_FL_MUST_NOT_SLEEP)))
		return 0;
	struct mmnt_record r = {};
	u64 now = bpf_ktime_get_ns();
	fill_section(&r, t, cb, now);
	fill_common(&r, MMNT_REC_SLEEP);
	r.kind = kind;
	r.addr = addr;
	r.ts_ns = now;
	r.stack_id = get_stack_id(ctx, lr);
	emit(ctx, &r);
	return 0;
}

/*
 * MMNT_SLEEP_COUNT (record --sleep-detect count): a real sleep is seen by the
 * task's count of voluntary context switches (task_struct.nvcsw), read as a
 * must-not-sleep hook or callback enters and as it returns. __schedule()
 * counts one exactly when sched_switch fires with the task neither preempted
 * nor runnable, the test the sched_switch programs make: the same sleeps, and
 * no program on the context switches of the whole machine (the ambient tax of
 * a pipe ping-pong); but no stack at the sleep, so no sleeper, unless a
 * might-sleep record names it. One record per section that slept, at its return.
 */
static __always_inline void section_enter(u64 *nvcsw)
{
#ifdef MMNT_SLEEP_COUNT
	*nvcsw = TASK_FIELD(u64, MMNT_L_TASK_NVCSW);
#endif
}

static __always_inline void section_return(void *ctx, struct tstate *t, bool cb, u64 now)
{
#ifdef MMNT_SLEEP_COUNT
	u64 n = TASK_FIELD(u64, MMNT_L_TASK_NVCSW), *at = cb ? &t->c.nvcsw : &t->h.nvcsw;
	if (n == *at)
		return;
	/* (written in place where the ring buffer allows, not built on the stack
	 * of the hook and callback return programs beside their own records) */
	REC_BEGIN(r, MMNT_REC_SLEEP, goto counted);
	fill_section(r, t, cb, now);
	r->kind = MMNT_SLEEP_COUNTED;
	r->ret = (s32)(n - *at);
	r->ts_ns = now;
	r->stack_id = -1;
	REC_SEND(ctx, r);
counted:
	if (cb)
		t->h.nvcsw += n - *at;	/* the hook around it does not count them again */
#endif
}

/* a might-sleep function was entered; gfp_arg: 0 always counts, else 1/2 = a1/a2's gfp */
static __always_inline int might_sleep_hit(void *ctx, u64 func, u32 gfp_arg, u64 a1, u64 a2, u64 lr)
{
	if (gfp_arg == 1 && !(a1 & MMNT_GFP_DIRECT_RECLAIM))
		return 0;
	if (gfp_arg == 2 && !(a2 & MMNT_GFP_DIRECT_RECLAIM))
		return 0;
	return sleep_hit(ctx, MMNT_SLEEP_MIGHT, func, lr);
}

#ifdef MMNT_MIGHT_SLEEP
int ms_entry(struct pt_regs *ctx)
{
	u32 z = 0;
	s64 *n = nosleep.lookup(&z);
	if (!n || *n <= 0)
		return 0;
	u64 ip = bpf_get_func_ip(ctx);
	struct cbinfo *si = sleeper_info.lookup(&ip);
	if (!si)
		return sleep_hit(ctx, MMNT_SLEEP_MIGHT, ip, KP_LR(ctx));
	return might_sleep_hit(ctx, si->func, si->hook, PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), KP_LR(ctx));
}
#endif


#endif /* MMNT_SLEEP_H */
