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
BPF_HASH(seen_ops, u64, u32, 4096);		/* ops tables already reported, in generation (walk_gen) */
BPF_TABLE("lru_hash", u64, u32, seen_mm, 4096);	/* mms whose subscriptions were walked, in generation */
/* The generation of what was seen: bumped by a module load (module_loaded()
 * below) and by user space when it forgets what was seen. An entry of
 * seen_ops or seen_mm from an older generation counts as not seen. */
MMNT_READ_ARRAY(walk_gen, u32, 1);	/* read at every poll: mmap()ed where it can be */
/* [0] ops records sent, [1] those user space has probed, [2] changes to
 * cb_expected and cb_seen (user space reads those maps only when it moved),
 * [3] ops records the record buffer had no room for (ops_unsent) */
BPF_ARRAY(disc, u64, 4);
/* mm -> the interval notifiers' ops tables whose records found the buffer full
 * (up to MMNT_UNSENT_IOPS per mm, as two drivers' userptrs on one process;
 * more, and the last slot holds the latest): found at a hook on that mm, not
 * by a walk (ops_unsent); least recently used first out, as an mm that is gone
 * never takes its own */
#define MMNT_UNSENT_IOPS 4
struct unsent_iops_v {
	u64 ops[MMNT_UNSENT_IOPS];
};
BPF_TABLE("lru_hash", u64, struct unsent_iops_v, unsent_iops, 256);
BPF_HASH(cb_expected, u64, u64, 1024);	/* op -> its calls by hooks while probing was under way */
BPF_HASH(cb_seen, u64, u64, 1024);	/* op -> those of them our callback probes timed */

static __always_inline u32 seen_gen(void)
{
	u32 z = 0, *g = walk_gen.lookup(&z);
	return g ? *g : 0;
}

/* disc[k] (0 if unreadable); disc_add(k): one more to it */
static __always_inline u64 disc_read(u32 k)
{
	u64 *v = disc.lookup(&k);
	return v ? *v : 0;
}

static __always_inline void disc_add(u32 k)
{
	u64 *v = disc.lookup(&k);
	if (v)
		__sync_fetch_and_add(v, 1);
}

/* ops records lost so far (disc[3]): a task that walked its mm's subscribers
 * walks them again once this moves (hook_entry's walked_gen) */
static __always_inline u32 ops_unsent_count(void)
{
	return (u32)disc_read(3);
}

/* What a walk of an mm's subscribers is good for: the generation of what was
 * seen, and the ops records lost so far. A task walks its mm again (hook_entry's
 * walked_gen), and an mm counts as not walked (seen_mm), once this moves. */
static __always_inline u32 walk_key(void)
{
	return seen_gen() + ops_unsent_count();
}

/* Are callbacks reported but not yet probed? Then each hook counts, at its
 * return, the calls its subscribers' ops got that no probe of ours timed. */
static __always_inline bool probing_pending(void)
{
	return disc_read(0) != disc_read(1);
}


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
#ifdef MMNT_HAVE_OP_ARCH_INVALIDATE_SECONDARY_TLBS
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
/* An OPS record goes to the ring buffer, or (seq: the start-up sweep, an
 * iterator program) straight to the reader of the iterator. */
static __always_inline int put_ops(void *ctx, void *seq, struct mmnt_record *r)
{
#ifdef MMNT_ITER
	if (seq) {
		bpf_seq_write((struct seq_file *)seq, r, sizeof(*r));
		return 0;
	}
#endif
	if (emit(ctx, r) == 0) {
		disc_add(0);		/* sent */
		return 0;
	}
	return -1;
}

/*
 * An ops record the buffer had no room for (a full ring buffer): were the table
 * left marked seen, its callbacks would never be probed, nor their calls counted
 * untimed, for the rest of the session, while the report said only "N dropped".
 * So it is unmarked, and so is its mm; and disc[3] moves, which makes every task
 * walk its mm's subscribers again at its next hook call (once per mm: seen_mm
 * is keyed by walk_gen + disc[3]; each table already seen costs a seen_ops
 * lookup): the table is reported again once there is room, and the hook calls
 * whose walk lost it meanwhile count its calls untimed (hook_entry). An interval
 * notifiers' table, which no walk of a hook finds (it is in the mm's interval
 * tree), is kept in unsent_iops for that walk (walk_subs_to).
 */
static __always_inline void ops_unsent(u64 ops, u64 mm)
{
	seen_ops.delete(&ops);
	if (mm)
		seen_mm.delete(&mm);
	disc_add(3);
}

/* (the table's pointers are read one at a time, not into an array on the
 * stack: the walks that send these records run inside the hook entry program,
 * some in bpf_loop() callbacks, whose frames and the caller's share the
 * verifier's 512 bytes; with the record, 176 bytes since it carries callbacks,
 * a 128-byte copy of the table made 528) */
static __always_inline void emit_ops_to(void *ctx, void *seq, u64 ops, u64 mm)
{
	u32 n = MMNT_L_OPS_SIZE / 8, g = seen_gen();
	struct mmnt_record r = {};
	u32 *v;

	if (!ops || ((v = seen_ops.lookup(&ops)) && *v == g))
		return;
	seen_ops.update(&ops, &g);
	if (n > MMNT_OPS_SLOTS)
		n = MMNT_OPS_SLOTS;
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
		u64 fn = 0;
		if (h < 0)
			continue;
		if (bpf_probe_read_kernel(&fn, sizeof(fn), (void *)(ops + i * 8)))
			return;		/* (as a table that cannot be read at all) */
		if (!fn)
			continue;
		r.hook = h;
		r.func = fn;
		if (put_ops(ctx, seq, &r)) {
			ops_unsent(ops, mm);	/* all of it again later (user space skips what it probed) */
			return;
		}
	}
}

static __always_inline void emit_ops(void *ctx, u64 ops, u64 mm)
{
	emit_ops_to(ctx, 0, ops, mm);
}

/* an interval notifiers' table lost to a full buffer: kept for its mm's next
 * walk (walk_subs_to), beside those kept already */
static __always_inline void iops_keep(u64 mm, u64 ops)
{
	struct unsent_iops_v *v = unsent_iops.lookup(&mm);

	if (!v) {
		struct unsent_iops_v n = {};
		n.ops[0] = ops;
		unsent_iops.update(&mm, &n);
		return;
	}
#pragma unroll
	for (int i = 0; i < MMNT_UNSENT_IOPS; i++) {
		if (v->ops[i] == ops)
			return;
		if (!v->ops[i] || i == MMNT_UNSENT_IOPS - 1) {
			v->ops[i] = ops;
			return;
		}
	}
}

static __always_inline void emit_interval_ops_to(void *ctx, void *seq, u64 ops, u64 mm)
{
	u64 invalidate = 0;
	u32 g = seen_gen(), *v;
	struct mmnt_record r = {};

	if (!ops || ((v = seen_ops.lookup(&ops)) && *v == g))
		return;
	seen_ops.update(&ops, &g);
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
	if (put_ops(ctx, seq, &r)) {
		ops_unsent(ops, mm);
		if (mm)
			iops_keep(mm, ops);
	}
}

static __always_inline void emit_interval_ops(void *ctx, u64 ops, u64 mm)
{
	emit_interval_ops_to(ctx, 0, ops, mm);
}

/* Walk mm->notifier_subscriptions->list once per mm (bounded). */
static __always_inline void walk_subs_to(void *ctx, void *seq, u64 mm, bool force)
{
#if MMNT_SUBS_LIST_OFF >= 0
	u64 subs = 0, node = 0;
	/* an mm walked before an ops record was lost is walked again: a walk here
	 * may have found the table marked seen while another CPU's record of it
	 * was being lost, and skipped it */
	u32 g = walk_key(), *v;

	if (!mm || (!force && (v = seen_mm.lookup(&mm)) && *v == g))
		return;
	seen_mm.update(&mm, &g);
	struct unsent_iops_v *iops = unsent_iops.lookup(&mm);
	if (iops) {			/* interval notifiers' tables lost to a full buffer */
		struct unsent_iops_v o = *iops;
		unsent_iops.delete(&mm);
		/* a loop, not unrolled (one copy of the emit in the program), that
		 * takes the first and shifts the rest down: constant offsets only */
#pragma clang loop unroll(disable)
		for (int i = 0; i < MMNT_UNSENT_IOPS; i++) {
			u64 first = o.ops[0];
			if (!first)
				break;
#pragma unroll
			for (int j = 0; j < MMNT_UNSENT_IOPS - 1; j++)
				o.ops[j] = o.ops[j + 1];
			o.ops[MMNT_UNSENT_IOPS - 1] = 0;
			emit_interval_ops_to(ctx, seq, first, mm);	/* (kept again if lost again) */
		}
	}
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
		emit_ops_to(ctx, seq, ops, mm);
		if (bpf_probe_read_kernel(&node, sizeof(node), (void *)node))
			break;
	}
#endif
}

static __always_inline void walk_subs(void *ctx, u64 mm)
{
	walk_subs_to(ctx, 0, mm, false);
}

/* Byte offset in struct mmu_notifier_ops of the op a hook calls, -1: none counted */
static __always_inline int op_off_of(u32 hook)
{
	if (hook == MMNT_HOOK_START)
		return MMNT_L_OPS_invalidate_range_start;
	if (hook == MMNT_HOOK_END)
		return MMNT_L_OPS_invalidate_range_end;
	if (hook == MMNT_HOOK_RELEASE)
		return MMNT_L_OPS_release;
	if (hook == MMNT_HOOK_CLEAR_FLUSH_YOUNG)
		return MMNT_L_OPS_clear_flush_young;
	if (hook == MMNT_HOOK_CLEAR_YOUNG)
		return MMNT_L_OPS_clear_young;
	if (hook == MMNT_HOOK_TEST_YOUNG)
		return MMNT_L_OPS_test_young;
#ifdef MMNT_HAVE_OP_ARCH_INVALIDATE_SECONDARY_TLBS
	if (hook == MMNT_HOOK_SECONDARY_TLB)
		return MMNT_L_OPS_arch_invalidate_secondary_tlbs;
#endif
#ifdef MMNT_HAVE_OP_INVALIDATE_RANGE
	if (hook == MMNT_HOOK_SECONDARY_TLB)
		return MMNT_L_OPS_invalidate_range;
#endif
#ifdef MMNT_HAVE_OP_CHANGE_PTE
	if (hook == MMNT_HOOK_CHANGE_PTE)
		return MMNT_L_OPS_change_pte;
#endif
	return -1;
}

static __always_inline void add_to(u64 fn, bool seen)
{
	u64 one = 1, *v;
	if (seen) {
		v = cb_seen.lookup(&fn);
		if (v)
			__sync_fetch_and_add(v, 1);
		else if (cb_seen.insert(&fn, &one) != 0 && (v = cb_seen.lookup(&fn)))
			__sync_fetch_and_add(v, 1);
	} else {
		v = cb_expected.lookup(&fn);
		if (v)
			__sync_fetch_and_add(v, 1);
		else if (cb_expected.insert(&fn, &one) != 0 && (v = cb_expected.lookup(&fn)))
			__sync_fetch_and_add(v, 1);
	}
	disc_add(2);		/* after the change: a reader that sees it reads the maps again */
}

/*
 * mmu_notifier_unregister() calls the subscriber's release op itself, outside
 * any hook, while the subscription is still on the mm's list (its mm's exit
 * has not released it already: hlist_unhashed()). A subscriber that comes and
 * goes at once unregisters before that op can be probed, and the call would
 * go unseen: the unregistration counts it (cb_expected), and the release
 * probe, where it is in, matches it on the same task (cb_seen).
 */
BPF_HASH(unreg_release, u64, u64, 1024);	/* task -> the release op its unregistration calls */

static __always_inline void unregister_counts_release(u64 sub)
{
	u64 pprev = 0, ops = 0, fn = 0, id = bpf_get_current_pid_tgid();

	/* struct hlist_node { next; pprev; }: pprev NULL once unhashed */
	if (!sub || bpf_probe_read_kernel(&pprev, sizeof(pprev),
					  (void *)(sub + MMNT_L_SUB_HLIST + sizeof(void *))) || !pprev)
		return;
	bpf_probe_read_kernel(&ops, sizeof(ops), (void *)(sub + MMNT_L_SUB_OPS));
	if (ops)
		bpf_probe_read_kernel(&fn, sizeof(fn), (void *)(ops + MMNT_L_OPS_release));
	if (!fn)
		return;
	add_to(fn, false);
	unreg_release.update(&id, &fn);
}

/* A release callback outside any hook: the one this task's unregistration counted? */
static __always_inline void release_seen(u64 func)
{
	u64 id = bpf_get_current_pid_tgid(), *fn = unreg_release.lookup(&id);

	if (fn && *fn == func) {
		add_to(func, true);
		unreg_release.delete(&id);
	}
}

#define MMNT_RB_DEPTH 24	/* steps down or up an rbtree: depth <= 2*log2(n+1), 4095 nodes */

#ifdef MMNT_BPF_LOOP
/*
 * rb_next() by parent pointers, each step down or up in a bpf_loop()
 * callback (5.17+). As bounded loops, the two walks of 24 steps were
 * unrolled by the verifier at every node visited: 129,000 instructions
 * processed and 0.9 s to load hk_entry in the lab's 6.1 guest, as much for
 * hk_return and iter_itree, where the same programs without the interval
 * walk took 12,000 and 5,000. A callback's body is walked as a call.
 *
 * bcc links no subprograms: mmnt_rb_step is compiled as a function of its
 * own, and mmntrace/subprog.py appends its instructions to each program that
 * loads its placeholder (MMNT_LOOP_RB_IMM), which it makes a reference to
 * them. The callback's second argument (bpf_loop's context: the caller's
 * struct rbwalk) is read from r2 by hand: bcc would take a second parameter
 * of a program for a kprobe argument.
 */
struct rbwalk {
	u64 cur;	/* going up: the node whose successor is sought */
	u64 next;	/* the successor so far */
	u64 up;		/* 0: down the right subtree's left spine; 1: up */
};

static long (*mmnt_bpf_loop)(u32 nr_loops, void *callback_fn, void *callback_ctx, u64 flags) = (void *)181;

int mmnt_rb_step(void *index)
{
	struct rbwalk *w;
	u64 a = 0, b = 0;

	asm volatile("%0 = r2" : "=r"(w));
	if (!w->up) {		/* the leftmost node of the right subtree */
		bpf_probe_read_kernel(&a, sizeof(a), (void *)(w->next + MMNT_L_RB_LEFT));
		if (!a)
			return 1;
		w->next = a;
		return 0;
	}
	/* up to the first ancestor we are left of */
	bpf_probe_read_kernel(&a, sizeof(a), (void *)(w->cur + MMNT_L_RB_PARENT));
	w->next = a & ~3ULL;
	if (!w->next)
		return 1;
	bpf_probe_read_kernel(&b, sizeof(b), (void *)(w->next + MMNT_L_RB_RIGHT));
	if (b != w->cur)
		return 1;
	w->cur = w->next;
	w->next = 0;
	return 0;
}

static __always_inline u64 rb_next_of(u64 node)
{
	struct rbwalk w = {};
	u64 fn;

	bpf_probe_read_kernel(&w.next, sizeof(w.next), (void *)(node + MMNT_L_RB_RIGHT));
	w.up = !w.next;
	w.cur = node;
	asm volatile("%0 = " MMNT_STR(MMNT_LOOP_RB_IMM) " ll" : "=r"(fn));
	mmnt_bpf_loop(MMNT_RB_DEPTH, (void *)fn, &w, 0);
	return w.next;
}
#else
/* rb_next() by parent pointers (kernels without bpf_loop): no stack of pending subtrees, so that the
 * verifier's states at a walk's loop head stay alike and it can prune them */
static __always_inline u64 rb_next_of(u64 node)
{
	u64 next = 0, right = 0;

	bpf_probe_read_kernel(&right, sizeof(right), (void *)(node + MMNT_L_RB_RIGHT));
	if (right) {		/* the leftmost node of the right subtree */
		next = right;
#pragma clang loop unroll(disable)
		for (int j = 0; j < MMNT_RB_DEPTH; j++) {
			u64 left = 0;
			bpf_probe_read_kernel(&left, sizeof(left), (void *)(next + MMNT_L_RB_LEFT));
			if (!left)
				break;
			next = left;
		}
	} else {		/* up to the first ancestor we are left of */
		u64 cur = node;
#pragma clang loop unroll(disable)
		for (int j = 0; j < MMNT_RB_DEPTH; j++) {
			u64 pc = 0, pr = 0;
			bpf_probe_read_kernel(&pc, sizeof(pc), (void *)(cur + MMNT_L_RB_PARENT));
			next = pc & ~3ULL;
			if (!next)
				break;
			bpf_probe_read_kernel(&pr, sizeof(pr), (void *)(next + MMNT_L_RB_RIGHT));
			if (pr != cur)
				break;
			cur = next;
			next = 0;
		}
	}
	return next;
}

#endif /* MMNT_BPF_LOOP */

#define MMNT_ITREE_COUNT_NODES 64	/* interval notifiers a hook's count visits */

/*
 * The interval notifiers a range start (mn_itree_invalidate(), inlined on
 * 6.12) or a release (mn_itree_release(): all of them) calls: each one whose
 * [start, last] meets [start, last] of the range, once. In order from the
 * leftmost node (the tree is sorted by start) up to the first node that
 * starts past the range. Read at range start's return, the tree is the one
 * the core walked: from mn_itree_inv_start_range() until this range's
 * mn_itree_inv_end() (in range_end) inserts and removals are deferred. An mm
 * with more interval notifiers below the range's end than one count visits
 * is a drop (MMNT_DROP_ITREE), not a silent gap.
 */
#ifdef MMNT_BPF_LOOP
/* count_itree()'s visits, one node each, in a bpf_loop() callback: the
 * caller's struct itcount (r2, as in mmnt_rb_step) says where it is. */
struct itcount {
	u64 node;	/* the next node to visit; 0: done */
	u64 start;
	u64 last;
};

int mmnt_itree_step(void *index)
{
	struct itcount *c;
	u64 v = 0;	/* one slot for each read in turn: this frame adds to hk_entry's 392 bytes of stack (512 at most) */

	asm volatile("%0 = r2" : "=r"(c));
	if (!c->node)
		return 1;
	bpf_probe_read_kernel(&v, sizeof(v), (void *)(c->node + MMNT_L_ITN_START));
	if (v > c->last) {		/* sorted by start: no later node meets the range */
		c->node = 0;
		return 1;
	}
	v = 0;
	bpf_probe_read_kernel(&v, sizeof(v), (void *)(c->node + MMNT_L_ITN_LAST));
	if (v >= c->start) {
		u64 ops = 0;
		bpf_probe_read_kernel(&ops, sizeof(ops), (void *)(c->node - MMNT_L_ISUB_TREE + MMNT_L_ISUB_OPS));
		v = 0;
		if (ops)
			bpf_probe_read_kernel(&v, sizeof(v), (void *)(ops + MMNT_L_IOPS_INVALIDATE));
		if (v)
			add_to(v, false);
	}
	c->node = rb_next_of(c->node);
	return 0;
}

static __always_inline void count_itree(u64 subs, u64 start, u64 last)
{
#if MMNT_SUBS_ITREE_OFF >= 0
	struct itcount c = { .start = start, .last = last };
	u64 fn;

	if (bpf_probe_read_kernel(&c.node, sizeof(c.node), (void *)(subs + MMNT_SUBS_ITREE_OFF + MMNT_L_RBC_LEFTMOST)))
		return;
	asm volatile("%0 = " MMNT_STR(MMNT_LOOP_ITREE_IMM) " ll" : "=r"(fn));
	mmnt_bpf_loop(MMNT_ITREE_COUNT_NODES, (void *)fn, &c, 0);
	if (c.node)
		count_drop(MMNT_DROP_ITREE);
#endif
}
#else
static __always_inline void count_itree(u64 subs, u64 start, u64 last)
{
#if MMNT_SUBS_ITREE_OFF >= 0
	u64 node = 0;

	if (bpf_probe_read_kernel(&node, sizeof(node), (void *)(subs + MMNT_SUBS_ITREE_OFF + MMNT_L_RBC_LEFTMOST)))
		return;
#pragma clang loop unroll(disable)
	for (int i = 0; i < MMNT_ITREE_COUNT_NODES; i++) {
		u64 ns = 0, nl = 0, ops = 0, fn = 0;
		if (!node)
			return;
		bpf_probe_read_kernel(&ns, sizeof(ns), (void *)(node + MMNT_L_ITN_START));
		if (ns > last)
			return;
		bpf_probe_read_kernel(&nl, sizeof(nl), (void *)(node + MMNT_L_ITN_LAST));
		if (nl >= start) {
			bpf_probe_read_kernel(&ops, sizeof(ops), (void *)(node - MMNT_L_ISUB_TREE + MMNT_L_ISUB_OPS));
			if (ops)
				bpf_probe_read_kernel(&fn, sizeof(fn), (void *)(ops + MMNT_L_IOPS_INVALIDATE));
			if (fn)
				add_to(fn, false);
		}
		node = rb_next_of(node);
	}
	if (node)
		count_drop(MMNT_DROP_ITREE);
#endif
}

#endif /* MMNT_BPF_LOOP */

/* Each subscriber on the mm's list whose op at ``off`` (and ``off2``) is set
 * was called once: cb_expected[op]++. */
static __always_inline void count_list(u64 subs, int off, int off2)
{
#if MMNT_SUBS_LIST_OFF >= 0
	u64 node = 0;

	if (bpf_probe_read_kernel(&node, sizeof(node), (void *)(subs + MMNT_SUBS_LIST_OFF)))
		return;
#pragma clang loop unroll(disable)
	for (int i = 0; i < MMNT_MAX_SUBS; i++) {
		u64 ops = 0, fn = 0;
		if (!node)
			break;
		bpf_probe_read_kernel(&ops, sizeof(ops), (void *)(node - MMNT_L_SUB_HLIST + MMNT_L_SUB_OPS));
		if (ops) {
			bpf_probe_read_kernel(&fn, sizeof(fn), (void *)(ops + off));
			if (fn)
				add_to(fn, false);
			fn = 0;
			if (off2 >= 0)
				bpf_probe_read_kernel(&fn, sizeof(fn), (void *)(ops + off2));
			if (fn)
				add_to(fn, false);
		}
		if (bpf_probe_read_kernel(&node, sizeof(node), (void *)node))
			break;
	}
#endif
}

static __always_inline u64 subs_of(u64 mm)
{
	u64 subs = 0;

	if (!mm || bpf_probe_read_kernel(&subs, sizeof(subs), (void *)(mm + MMNT_L_MM_SUBS)))
		return 0;
	return subs;
}

/*
 * A release (__mmu_notifier_release) empties the mm's list as it goes and
 * ends its interval walk with mn_itree_inv_end(), which applies deferred
 * changes: what it calls is counted at its entry, while probing is under way.
 */
static __always_inline void count_expected_at_entry(struct hstate *s)
{
	u64 subs = subs_of(s->mm);

	if (!subs)
		return;
	s->expected_at_entry = 1;
	count_list(subs, MMNT_L_OPS_release, -1);
	count_itree(subs, 0, ~0ULL);
}

/*
 * At a hook's return while callbacks are being probed: each subscriber of
 * the mm whose op for this hook is set was called once (the core calls every
 * one): cb_expected[op]++; a range start's interval notifiers too
 * (count_itree). The callbacks our probes timed inside this invocation:
 * cb_seen[op]++ (those beyond cbs[] were, as they came). User space reads
 * expected - seen per op as the calls no probe timed (plain sums: matching
 * the two here made the verifier give up). Where the core may have stopped
 * early (a failed start: an interval notifier refused, the list was skipped;
 * test_young once one said young) the invocation is a drop
 * (MMNT_DROP_EARLY_STOP) while a probe is pending, never silent. Before 6.6 range_end also
 * calls each invalidate_range op, unless only_end. A release counted its
 * calls at entry.
 */
static __always_inline void count_untimed(struct hstate *s, u32 hook, u64 rc)
{
#if MMNT_SUBS_LIST_OFF >= 0
	int off = op_off_of(hook), off2 = -1;

	if (off < 0 || !s->mm)
		return;
	if (hook == MMNT_HOOK_RELEASE) {
		if (!s->expected_at_entry)
			return;
	} else {
		u64 subs;
		if ((hook == MMNT_HOOK_START || hook == MMNT_HOOK_TEST_YOUNG) && (u32)rc) {
			/* the core may have stopped early: the calls no probe
			 * timed are unknown, so this invocation is a drop */
			if (s->pending || probing_pending())
				count_drop(MMNT_DROP_EARLY_STOP);
			return;
		}
#ifdef MMNT_HAVE_OP_INVALIDATE_RANGE
		if (hook == MMNT_HOOK_END && !s->only_end)
			off2 = MMNT_L_OPS_invalidate_range;
#endif
		subs = subs_of(s->mm);
		if (!subs)
			return;
		count_list(subs, off, off2);
		if (hook == MMNT_HOOK_START)
			count_itree(subs, s->start, s->end - 1);
	}
	u32 n = s->ncb;
	/* unrolled, constant offsets: a loop here became a pointer walk that the
	 * 6.1 verifier could not bound */
#pragma unroll
	for (int j = 0; j < MMNT_HOOK_CBS; j++) {
		if (j < n)
			add_to(s->cbs[j], true);
	}
#endif
}

#ifdef MMNT_ITER
/*
 * The start-up sweep: a task iterator (5.8+, BTF) visits every task once,
 * before --ready-file is written, and reports the ops tables of the
 * subscribers that already exist: regular ones on mm->notifier_subscriptions
 * ->list, interval ones in its interval tree (an rbtree walked with a small
 * stack). Without it they were found only at their mm's first hook, and
 * interval ones (mn_itree_invalidate is inlined on 6.12) never.
 */
struct mmnt_iter_meta {
	void *seq;
	u64 session_id;
	u64 seq_num;
};
struct mmnt_iter_task {
	struct mmnt_iter_meta *meta;
	struct task_struct *task;
};

#define MMNT_ITREE_NODES 32	/* interval notifiers visited per mm and run: the verifier walks each (128: 4.3 s of every start in the lab) */

/* An interval tree longer than that is walked in several runs of the
 * iterator: a run that stops early leaves the node to go on from; user
 * space then runs it again with itree_resuming set, and only those mms are
 * walked, from there on (Tracer._sweep). */
BPF_HASH(itree_resume, u64, u64, 1024);		/* mm -> its next node */
BPF_ARRAY(itree_resuming, u32, 1);
/* In-order walk from the leftmost node (rb_next_of()). */
static __always_inline void walk_itree_to(void *ctx, void *seq, u64 mm)
{
#if MMNT_SUBS_ITREE_OFF >= 0
	u64 subs = 0, node = 0;
	u32 z = 0;
	u32 *resuming = itree_resuming.lookup(&z);
	u64 *from = itree_resume.lookup(&mm);

	if (resuming && *resuming) {		/* a rerun: the trees left unfinished */
		if (!from)
			return;
		node = *from;
	} else {
		if (bpf_probe_read_kernel(&subs, sizeof(subs), (void *)(mm + MMNT_L_MM_SUBS)) || !subs)
			return;
		if (bpf_probe_read_kernel(&node, sizeof(node),
					  (void *)(subs + MMNT_SUBS_ITREE_OFF + MMNT_L_RBC_LEFTMOST)))
			return;
	}
#pragma clang loop unroll(disable)
	for (int i = 0; i < MMNT_ITREE_NODES; i++) {
		u64 ops = 0;
		if (!node)
			break;
		bpf_probe_read_kernel(&ops, sizeof(ops), (void *)(node - MMNT_L_ISUB_TREE + MMNT_L_ISUB_OPS));
		emit_interval_ops_to(ctx, seq, ops, mm);
		node = rb_next_of(node);
	}
	if (node)			/* more than this run could visit: the next run goes on */
		itree_resume.update(&mm, &node);
	else if (from)
		itree_resume.delete(&mm);
#endif
}

/* the process's task (its threads share the mm), or 0 */
static __always_inline u64 iter_mm(struct mmnt_iter_task *ctx)
{
	struct task_struct *task = ctx->task;
	u64 mm = 0, leader = 0;

	if (!task)
		return 0;
	bpf_probe_read_kernel(&leader, sizeof(leader), (void *)((u64)task + MMNT_L_TASK_GROUP_LEADER));
	if (leader != (u64)task)
		return 0;
	bpf_probe_read_kernel(&mm, sizeof(mm), (void *)((u64)task + MMNT_L_TASK_MM));
	return mm;
}

/* Two iterator programs, one walk each: in one program the verifier would
 * explore every path of the first walk times every path of the second. */
int iter_subs(struct mmnt_iter_task *ctx)
{
	u64 mm = iter_mm(ctx);
	if (mm)
		walk_subs_to(ctx, ctx->meta->seq, mm, true);
	return 0;
}

int iter_itree(struct mmnt_iter_task *ctx)
{
	u64 mm = iter_mm(ctx);
	if (mm)
		walk_itree_to(ctx, ctx->meta->seq, mm);
	return 0;
}
#endif

#endif /* MMNT_DISCOVERY_H */
