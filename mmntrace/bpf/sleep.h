/* SPDX-License-Identifier: GPL-2.0 */
/*
 * mmntrace kernel side: sleeping, or calling what may sleep, inside a
 * must-not-sleep section (sched_switch, might-sleep functions).
 * Included by bpf/mmntrace.bpf.c (bcc C, compiled with -I<repo>/bpf).
 */
#ifndef MMNT_SLEEP_H
#define MMNT_SLEEP_H

BPF_HASH(sleeper_info, u64, struct cbinfo, 256);	/* might-sleep function -> gfp arg */


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
	struct mmnt_record r = {};
	if (t->c.active) {
		struct cstate *c = &t->c;
		if (!(c->flags & MMNT_FL_MUST_NOT_SLEEP))
			return 0;
		r.hook = c->hook;
		r.flags = c->flags;
		r.preempt_count = c->pc;
		r.rt = c->rt;
		r.event = c->event;
		r.seq = c->seq;
		r.mm = c->mm;
		r.start = c->start;
		r.end = c->end;
		r.func = c->func;
		r.dur_ns = bpf_ktime_get_ns() - c->ts;
	} else {
		struct hstate *h = &t->h;
		if (!h->active || !(h->flags & MMNT_FL_MUST_NOT_SLEEP))
			return 0;
		r.hook = h->hook;
		r.flags = h->flags;
		r.preempt_count = h->pc;
		r.rt = h->rt;
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
	r.stack_id = get_stack_id(ctx, lr);
	emit(ctx, &r);
	return 0;
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
