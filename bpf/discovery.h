/* SPDX-License-Identifier: GPL-2.0 */
/*
 * mmntrace kernel side: finding subscribers. Every ops table seen (at
 * registration, or on an mm's first hook) is reported once; user space then
 * probes its callbacks, which cb_info maps back to their op.
 * Included by bpf/mmntrace.bpf.c (bcc C, compiled with -I<repo>/bpf).
 */
#ifndef MMNT_DISCOVERY_H
#define MMNT_DISCOVERY_H

BPF_HASH(cb_info, u64, struct cbinfo, 4096);	/* probe address (addr, addr+4) -> op */
BPF_HASH(seen_ops, u64, u8, 4096);		/* ops tables already reported */
BPF_TABLE("lru_hash", u64, u8, seen_mm, 4096);		/* mms whose subscriptions were walked */
BPF_ARRAY(walk_gen, u32, 1);			/* user space bumps it when it clears seen_mm */


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

#endif /* MMNT_DISCOVERY_H */
