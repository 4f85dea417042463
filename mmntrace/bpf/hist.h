/* SPDX-License-Identifier: GPL-2.0 */
/*
 * mmntrace kernel side: in-kernel aggregation (--aggregate).
 * Included by bpf/mmntrace.bpf.c (bcc C, compiled with -I<repo>/bpf).
 */
#ifndef MMNT_HIST_H
#define MMNT_HIST_H

#if defined(MMNT_AGGREGATE) || defined(MMNT_MIN_LAT_NS)
/*
 * In-kernel aggregation (--aggregate, and every call under --min-latency): flat arrays, no hash. A series is a
 * hook (0 .. MMNT_NR_HOOKS-1) or one driver callback (user space numbers
 * them from MMNT_NR_HOOKS in cb_info); the event index is the event + 1
 * (0: none). User space maps the arrays (BPF_F_MMAPABLE) and reads them whole.
 */
#define MMNT_NR_SERIES 128
#define MMNT_NR_EVIDX 16
struct tot_val {
	u64 count, sum_ns;
};
BPF_F_TABLE("array", u32, u64, hist, MMNT_NR_SERIES * MMNT_NR_EVIDX * MMNT_NR_SLOTS, BPF_F_MMAPABLE);
BPF_F_TABLE("array", u32, struct tot_val, totals, MMNT_NR_SERIES * MMNT_NR_EVIDX, BPF_F_MMAPABLE);
/*
 * The entry point that made each timed callback call, per callback series:
 * [series][hook], the last slot for none (no hook of ours was running). A
 * per-event recording has it per call (the records' via); this is the same
 * for the histograms: before 6.6 invalidate_range_end calls the
 * invalidate_range ops itself, not through the secondary-TLB hook.
 */
#define MMNT_NR_VIA (MMNT_NR_HOOKS + 1)
BPF_F_TABLE("array", u32, u64, via, MMNT_NR_SERIES * MMNT_NR_VIA, BPF_F_MMAPABLE);
#endif

#if defined(MMNT_AGGREGATE) || defined(MMNT_MIN_LAT_NS)
static __always_inline void aggregate(u32 series, s32 event, u64 dur)
{
	u32 slot = bpf_log2l(dur);
	u32 ev = event < 0 ? 0 : (u32)event + 1;

	if (slot >= MMNT_NR_SLOTS)
		slot = MMNT_NR_SLOTS - 1;
	if (ev >= MMNT_NR_EVIDX)
		ev = MMNT_NR_EVIDX - 1;
	if (series >= MMNT_NR_SERIES) {
		count_drop(MMNT_DROP_SERIES);	/* more callbacks than series: counted, never silent */
		return;
	}
	u32 k = series * MMNT_NR_EVIDX + ev;
	struct tot_val *tv = totals.lookup(&k);
	if (tv) {
		__sync_fetch_and_add(&tv->count, 1);
		__sync_fetch_and_add(&tv->sum_ns, dur);
	}
	k = k * MMNT_NR_SLOTS + slot;
	u64 *h = hist.lookup(&k);
	if (h)
		__sync_fetch_and_add(h, 1);
}

/* a callback series' call, made inside hook via_hook (MMNT_HOOK_NONE: none) */
static __always_inline void count_via(u32 series, u32 via_hook)
{
	if (series >= MMNT_NR_SERIES)
		return;			/* counted as a drop by aggregate() */
	u32 k = series * MMNT_NR_VIA + (via_hook < MMNT_NR_HOOKS ? via_hook : MMNT_NR_HOOKS);
	u64 *n = via.lookup(&k);
	if (n)
		__sync_fetch_and_add(n, 1);
}
#endif

#endif /* MMNT_HIST_H */
