/* SPDX-License-Identifier: GPL-2.0 */
/*
 * mmntrace kernel side: the context of a call: preempt count (calibrated), IRQ
 * state, the range, and the rules that say whether it may sleep.
 * Included by bpf/mmntrace.bpf.c (bcc C, compiled with -I<repo>/bpf).
 */
#ifndef MMNT_CONTEXT_H
#define MMNT_CONTEXT_H

/* Calibration, per mechanism (a kprobe handler runs with preemption off, a
 * trampoline need not): [base+0] preempt offset, [+1] lowest raw seen,
 * [+2] hits, [+3] hits with IRQs off; base CALIB_KPROBE or CALIB_FENTRY. */
#define CALIB_KPROBE 0
#define CALIB_FENTRY 4
/* [8], [9]: what one probed callback (entry and return) costs its hook beyond
 * what its programs measure themselves, in ns, kprobe pair / fentry pair: the
 * probe machinery's dispatch before and after each program, measured at load
 * on getppid() (mmntrace/calibrate.py) and taken off the hook's
 * duration with the programs' own time (nested_ns); [16], [17] the same for a
 * callback probed at its entry alone (chained); [10] counts samples */
#define CALIB_OVERHEAD_KPROBE 8	/* a callback probed at entry and exit ... */
#define CALIB_OVERHEAD_FENTRY 9
#define CALIB_OVERHEAD_KPROBE_CHAINED 16	/* ... or at its entry alone (MMNT_CHAIN) */
#define CALIB_OVERHEAD_FENTRY_CHAINED 17
#define CALIB_NSAMPLES 10
/* PREEMPT_RT: the lowest migration_disabled and rcu_read_lock_nesting seen on
 * getppid, [12], [13] kprobe, [14], [15] fentry (user space starts them at ~0):
 * the probe machinery's own share, taken off what the hooks see */
#define CALIB_RT_KPROBE 12
#define CALIB_RT_FENTRY 14
#define MMNT_CALIB_SAMPLES 512
BPF_ARRAY(calib, u32, 18);
BPF_ARRAY(calib_dur, u64, MMNT_CALIB_SAMPLES);	/* durations of the calibration's outer function */

/* The dispatch cost of the callback probe that fired (fentry: irqs_off < 0),
 * with its exit probe's or without (chained) */
static __always_inline u64 probe_overhead(int irqs_off, bool chained)
{
	u32 k = irqs_off < 0 ? (chained ? CALIB_OVERHEAD_FENTRY_CHAINED : CALIB_OVERHEAD_FENTRY)
			     : (chained ? CALIB_OVERHEAD_KPROBE_CHAINED : CALIB_OVERHEAD_KPROBE);
	u32 *v = calib.lookup(&k);
	return v ? *v : 0;
}

/* One duration of the calibration's outer function, from the tracer itself. */
static __always_inline void calib_sample(u64 dur)
{
	u32 k = CALIB_NSAMPLES;
	if ((bpf_get_current_pid_tgid() >> 32) != MMNT_SELF_TGID)
		return;
	u32 *n = calib.lookup(&k);
	if (!n)
		return;
	u32 i = *n;		/* one thread calls getppid: no atomic needed (and no */
	*n = i + 1;		/* fetch-add before BPF v3: LLVM aborts on its return value) */
	u64 *slot = calib_dur.lookup(&i);
	if (slot)
		*slot = dur;
}
#ifndef MMNT_PC_VAR_OFF
BPF_PERCPU_ARRAY(pcpu_base, u64, 1);		/* this CPU's __per_cpu_offset, read once */
#endif

/*
 * Raw preempt_count of this CPU, masked; returns false if unreadable.
 * MMNT_PC_VAR_OFF (where vmlinux's BTF has the per-CPU variable that holds
 * the count: __preempt_count, or pcpu_hot's member): every program that reads
 * it is loaded by mmntrace itself, bcc's instructions with the placeholder
 * below made a reference to that variable (fentry.py for the trampolines'
 * copies, subprog.load_func for bcc's kprobe programs), so bpf_this_cpu_ptr()
 * gives this CPU's copy and one load reads it: no __per_cpu_offset lookup and
 * no bpf_probe_read_kernel() call (about 15 % of the fentry programs' time in
 * the lab, measured by taking the read out; make bench-ab, --aggregate
 * --backend kprobe: in-kernel time B/A 0.94). Without it, through the offsets.
 */
static __always_inline bool read_pc(int irqs_off, u32 *out)
{
#ifdef MMNT_PC_VAR_OFF
	u64 var;
	u32 raw;
	asm volatile("%0 = " MMNT_STR(MMNT_PC_VAR_IMM) " ll" : "=r"(var));
	void *p = bpf_this_cpu_ptr((void *)var);
	asm volatile("%0 = *(u32 *)(%1 + " MMNT_STR(MMNT_PC_VAR_OFF) ")" : "=r"(raw) : "r"(p));
	*out = raw & MMNT_PC_MASK;
	return true;
#elif MMNT_PC_ADDR && MMNT_PCPU_OFF_ADDR
	u32 z = 0, raw = 0;
	u64 base = 0;
	u64 *cached = pcpu_base.lookup(&z);	/* a CPU's per-cpu offset never changes */
	if (cached && *cached) {
		base = *cached;
	} else {
		u64 cpu = bpf_get_smp_processor_id();
		if (bpf_probe_read_kernel(&base, sizeof(base), (void *)(MMNT_PCPU_OFF_ADDR + cpu * 8)))
			return false;
		if (cached)
			*cached = base;
	}
	if (bpf_probe_read_kernel(&raw, sizeof(raw), (void *)(base + (u64)MMNT_PC_ADDR)))
		return false;
	*out = raw & MMNT_PC_MASK;
	return true;
#else
	return false;
#endif
}

/*
 * TASK_FIELD(T, off): the current task's field of type T at byte offset off.
 * Where these programs may hold the task as a BTF pointer (MMNT_TASK_STORAGE:
 * bpf_get_current_task_btf() is the per-task state's key; where the kernel
 * refuses that, build.py compiles again without both), a plain load, which the
 * verifier checks against task_struct's BTF (off must be a member of that
 * type and size) and makes fault-safe: no helper call. Else the task's
 * address and bpf_probe_read_kernel(); a read that faults gives 0 both ways.
 */
#ifdef MMNT_TASK_STORAGE
#define TASK_FIELD(T, off) (*(T *)((u8 *)bpf_get_current_task_btf() + (off)))
#else
#define TASK_FIELD(T, off) ({ T __v = 0; \
	bpf_probe_read_kernel(&__v, sizeof(__v), (void *)((u64)bpf_get_current_task() + (off))); __v; })
#endif

#ifdef MMNT_RT
/* current's migration_disabled (u16) and rcu_read_lock_nesting (int), raw */
static __always_inline void read_rt(u32 *md, u32 *rcu)
{
	s32 r = TASK_FIELD(s32, MMNT_TASK_RCU_OFF);
	*md = TASK_FIELD(u16, MMNT_TASK_MD_OFF);
	*rcu = r > 0 ? r : 0;
}

/* MMNT_RT_* of this task at entry, the probe's own share (calibrated) taken off */
static __always_inline u8 rt_context(int irqs_off)
{
	u32 md = 0, rcu = 0, k = irqs_off < 0 ? CALIB_RT_FENTRY : CALIB_RT_KPROBE;
	u8 out = 0;
	read_rt(&md, &rcu);
	u32 *lo = calib.lookup(&k);
	if (lo && md > *lo)
		out |= MMNT_RT_MIGRATE_OFF;
	k++;
	lo = calib.lookup(&k);
	if (lo && rcu > *lo)
		out |= MMNT_RT_RCU;
	return out;
}
#endif

/* IRQ state at entry: 1 disabled, 0 enabled, -1 unknown (fentry: no saved flags).
 * The interrupted context's flags a kprobe saved: x86 EFLAGS.IF; arm64 PSTATE's
 * I bit (DAIF; Debian's arm64 kernels leave GIC priority masking off). */
#ifdef MMNT_ARCH_ARM64
#define KP_IRQS_OFF(ctx) (!!((ctx)->pstate & 0x80))		/* PSR_I_BIT */
#define KP_LR(ctx) (((struct pt_regs *)(ctx))->regs[30])	/* get_stack_id */
#else
#define KP_IRQS_OFF(ctx) (!((ctx)->flags & X86_EFLAGS_IF))
#define KP_LR(ctx) 0ULL
#endif
#define IRQS_UNKNOWN (-1)

/* preempt_count (calibrated), IRQ state and (PREEMPT_RT) the sleeping-lock
 * context at entry, into pc/flags/rt. */
static __always_inline void entry_context(int irqs_off, u32 *pc, u8 *flags, u8 *rt)
{
#ifdef MMNT_RT
	*rt = rt_context(irqs_off);
#else
	*rt = 0;
#endif
	/* only fentry programs cannot see the IRQ state */
	u32 raw = 0, z = irqs_off < 0 ? CALIB_FENTRY : CALIB_KPROBE;
	if (read_pc(irqs_off, &raw)) {
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

static __always_inline bool hook_forbids_sleep(u32 hook, u8 flags, u8 rt)
{
	if (hook == MMNT_HOOK_SECONDARY_TLB || hook == MMNT_HOOK_CHANGE_PTE ||
	    hook == MMNT_HOOK_CLEAR_FLUSH_YOUNG || hook == MMNT_HOOK_CLEAR_YOUNG ||
	    hook == MMNT_HOOK_TEST_YOUNG)
		return true;
	if (flags & (MMNT_FL_ATOMIC | MMNT_FL_IRQS_OFF))
		return true;
	if (rt & MMNT_RT_RCU)		/* PREEMPT_RT: no voluntary sleep in an RCU read-side section */
		return true;
	if ((hook == MMNT_HOOK_START || hook == MMNT_HOOK_END || hook == MMNT_HOOK_INTERVAL) &&
	    !(flags & MMNT_FL_BLOCKABLE))
		return true;
	return false;
}

#endif /* MMNT_CONTEXT_H */
