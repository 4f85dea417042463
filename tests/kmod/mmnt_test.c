// SPDX-License-Identifier: GPL-2.0
/*
 * mmnt_test.ko: a test "secondary-MMU driver" for mmntrace.
 *
 * Every open file of /dev/mmnt_test is one client. A client may register two
 * mmu_notifier subscriptions on one mm (A: start/end/release/young/change_pte,
 * B: the secondary-TLB op only, since 6.6+ refuses a subscription with both),
 * insert interval notifiers, inject behaviour per hook, and read back a log of
 * every callback it received. It is the ground truth the tracer is checked
 * against, so callbacks record exactly what they saw at entry and injected
 * behaviour is applied even in atomic context, on purpose.
 *
 * Kernel differences are handled with MMNT_HAVE_* / MMNT_RANGE_HAS_VMA, set by
 * Kbuild from the headers of the target kernel.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/miscdevice.h>
#include <linux/fs.h>
#include <linux/mm.h>
#include <linux/sched.h>
#include <linux/sched/mm.h>
#include <linux/pid.h>
#include <linux/mmu_notifier.h>
#include <linux/vmalloc.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/spinlock.h>
#include <linux/mutex.h>
#include <linux/delay.h>
#include <linux/ktime.h>
#include <linux/preempt.h>
#include <linux/irqflags.h>

#include "mmnt_test_uapi.h"

#define MMNT_LOG_CAPACITY	65536u
#define MMNT_MAX_INTERVALS	16
#define MMNT_READ_CHUNK		64

#ifdef MMNT_HAVE_ARCH_INVALIDATE_SECONDARY_TLBS
#define MMNT_F_TLB_BIT MMNT_F_SECONDARY_TLB_IS_ARCH
#else
#define MMNT_F_TLB_BIT 0
#endif
#ifdef MMNT_HAVE_CHANGE_PTE
#define MMNT_F_CHANGE_PTE_BIT MMNT_F_CHANGE_PTE
#else
#define MMNT_F_CHANGE_PTE_BIT 0
#endif
#ifdef MMNT_RANGE_HAS_VMA
#define MMNT_F_VMA_BIT MMNT_F_RANGE_HAS_VMA
#else
#define MMNT_F_VMA_BIT 0
#endif
#define MMNT_FEATURES (MMNT_F_TLB_BIT | MMNT_F_CHANGE_PTE_BIT | MMNT_F_VMA_BIT)

/* Taken by the MMNT_B_MUTEX behaviour (uncontended unless several hooks run
 * concurrently). */
static DEFINE_MUTEX(mmnt_behaviour_mutex);

struct mmnt_client;

struct mmnt_interval {
	struct mmu_interval_notifier notifier;
	struct mmnt_client *client;
};

struct mmnt_behave_slot {
	u32 behaviour;
	u32 arg;
	u32 limited;		/* count was given: only `left` more invocations */
	atomic_t left;
};

struct mmnt_client {
	/* Serialises ioctls, read() and release of this client. */
	struct mutex ctl;

	/* Subscriptions (valid while registered). */
	struct mmu_notifier sub_a;
	struct mmu_notifier sub_b;
	struct mm_struct *mm;		/* registered mm, our own mmgrab */
	bool registered;
	bool has_a;			/* subscription A too (not MMNT_REG_TLB_ONLY) */

	/* Interval notifiers. */
	struct mm_struct *ival_mm;	/* our own mmgrab */
	struct mmnt_interval ivals[MMNT_MAX_INTERVALS];
	atomic64_t alt_calls;		/* calls of mmnt_interval_invalidate_alt */
	int nr_ivals;

	/* Behaviour table, read locklessly by callbacks. */
	struct mmnt_behave_slot behave[MMNT_T_NR_HOOKS];

	/* Log ring and counters, under lock (irqsave). */
	spinlock_t lock;
	struct mmnt_test_record *log;
	u32 head;			/* oldest record */
	u32 count;			/* records in the ring */
	u64 seq;
	struct mmnt_test_counts counts;
};

struct mmnt_entry {
	u64 ts;
	u32 preempt;
	u32 irqs_off;
	u32 migration_disabled;	/* PREEMPT_RT: a spinlock_t held disables migration ... */
	u32 rcu_depth;		/* ... and enters an RCU read-side section */
};

#ifdef CONFIG_SMP
#define MMNT_MIGRATION_DISABLED() (current->migration_disabled)
#else
#define MMNT_MIGRATION_DISABLED() 0
#endif

/* Must be the first thing a callback does. */
#define MMNT_ENTRY(e) do {					\
	(e).preempt = preempt_count();				\
	(e).irqs_off = irqs_disabled() ? 1 : 0;			\
	(e).migration_disabled = MMNT_MIGRATION_DISABLED();	\
	(e).rcu_depth = rcu_preempt_depth();			\
	(e).ts = ktime_get_ns();				\
} while (0)

/* Apply the injected behaviour of @hook. Returns true if it asked for EAGAIN
 * (the caller decides whether that applies). */
static bool mmnt_inject(struct mmnt_client *c, unsigned int hook)
{
	u32 b = READ_ONCE(c->behave[hook].behaviour);
	u32 arg = READ_ONCE(c->behave[hook].arg);

	if (b != MMNT_B_NONE && READ_ONCE(c->behave[hook].limited) &&
	    atomic_dec_if_positive(&c->behave[hook].left) < 0)
		return false;
	switch (b) {
	case MMNT_B_DELAY: {
		/*
		 * Busy for arg us of ktime, the clock of the module's own records
		 * and of the tracer's durations. Not udelay(): it counts TSC ticks
		 * at the rate the kernel calibrated at boot, and an emulated CPU's
		 * calibration can be far off (a lab guest's udelay(300) once took
		 * 3 us by ktime).
		 */
		u64 end = ktime_get_ns() + (u64)arg * NSEC_PER_USEC;

		while (ktime_get_ns() < end)
			cpu_relax();
		break;
	}
	case MMNT_B_MSLEEP: {
		/*
		 * Deliberately sleeps even in atomic context: that is the bug the
		 * tracer must catch. The scheduler then prints "BUG: scheduling
		 * while atomic" and resets preempt_count to 0; put back the count
		 * (and irq state) our caller's locks expect, or the count would
		 * underflow at their unlock and every later user page fault of
		 * the task would see in_atomic() and end in SIGSEGV.
		 */
		int pc = preempt_count();
		bool irqs_off = irqs_disabled();
		unsigned long nvcsw = current->nvcsw, flags;
		bool switched;

		msleep(arg);
		switched = current->nvcsw != nvcsw;
		if (irqs_off && !irqs_disabled())
			local_irq_disable();
		if (preempt_count() != pc)
			preempt_count_set(pc);
		spin_lock_irqsave(&c->lock, flags);
		c->counts.msleeps++;
		if (switched)
			c->counts.msleeps_switched++;
		spin_unlock_irqrestore(&c->lock, flags);
		break;
	}
	case MMNT_B_MUTEX:
		mutex_lock(&mmnt_behaviour_mutex);
		mutex_unlock(&mmnt_behaviour_mutex);
		break;
	case MMNT_B_EAGAIN:
		return true;
	default:
		break;
	}
	return false;
}

static void mmnt_record(struct mmnt_client *c, const struct mmnt_entry *e,
			unsigned int hook, int event, struct mm_struct *mm,
			unsigned long start, unsigned long end, bool blockable,
			int ret)
{
	struct mmnt_test_record *r;
	unsigned long flags;
	u64 body;

	spin_lock_irqsave(&c->lock, flags);
	body = ktime_get_ns() - e->ts;
	c->counts.calls[hook]++;
	c->counts.body_ns[hook] += body;
	if (e->preempt || e->irqs_off)
		c->counts.atomic[hook]++;
	if (c->count >= MMNT_LOG_CAPACITY) {
		c->counts.lost++;
		goto out;
	}
	r = &c->log[(c->head + c->count) % MMNT_LOG_CAPACITY];
	r->seq = c->seq++;
	r->ts_ns = e->ts;
	r->mm = (u64)(unsigned long)mm;
	r->start = start;
	r->end = end;
	r->hook = hook;
	r->event = event;
	r->blockable = blockable ? 1 : 0;
	r->preempt_count = e->preempt;
	r->irqs_disabled = e->irqs_off;
	r->pid = current->tgid;
	r->tid = current->pid;
	r->ret = ret;
	r->migration_disabled = e->migration_disabled;
	r->rcu_depth = e->rcu_depth;
	r->body_ns = body;
	c->count++;
	c->counts.logged++;
out:
	spin_unlock_irqrestore(&c->lock, flags);
}

/* ---- subscription A ---------------------------------------------------- */

static int mmnt_invalidate_range_start(struct mmu_notifier *sub,
				       const struct mmu_notifier_range *range)
{
	struct mmnt_client *c = container_of(sub, struct mmnt_client, sub_a);
	bool blockable;
	struct mmnt_entry e;
	int ret = 0;

	MMNT_ENTRY(e);
	blockable = mmu_notifier_range_blockable(range);
	/*
	 * Note: since 5.13 the core does WARN_ON(ops->invalidate_range_end)
	 * when a start fails, and subscription A has an end, so an injected
	 * -EAGAIN also produces that WARNING (and the core then calls our end
	 * for the failed range). Non-blockable ranges come from the OOM reaper.
	 */
	if (mmnt_inject(c, MMNT_T_START) && !blockable)
		ret = -EAGAIN;
	mmnt_record(c, &e, MMNT_T_START, range->event, range->mm, range->start,
		    range->end, blockable, ret);
	return ret;
}

static void mmnt_invalidate_range_end(struct mmu_notifier *sub,
				      const struct mmu_notifier_range *range)
{
	struct mmnt_client *c = container_of(sub, struct mmnt_client, sub_a);
	struct mmnt_entry e;

	MMNT_ENTRY(e);
	mmnt_inject(c, MMNT_T_END);
	mmnt_record(c, &e, MMNT_T_END, range->event, range->mm, range->start,
		    range->end, mmu_notifier_range_blockable(range), 0);
}

static void mmnt_release(struct mmu_notifier *sub, struct mm_struct *mm)
{
	struct mmnt_client *c = container_of(sub, struct mmnt_client, sub_a);
	struct mmnt_entry e;

	MMNT_ENTRY(e);
	mmnt_inject(c, MMNT_T_RELEASE);
	mmnt_record(c, &e, MMNT_T_RELEASE, -1, mm, 0, 0, true, 0);
}

static int mmnt_clear_flush_young(struct mmu_notifier *sub,
				  struct mm_struct *mm,
				  unsigned long start, unsigned long end)
{
	struct mmnt_client *c = container_of(sub, struct mmnt_client, sub_a);
	struct mmnt_entry e;

	MMNT_ENTRY(e);
	mmnt_inject(c, MMNT_T_CLEAR_FLUSH_YOUNG);
	mmnt_record(c, &e, MMNT_T_CLEAR_FLUSH_YOUNG, -1, mm, start, end, true, 0);
	return 0;
}

static int mmnt_clear_young(struct mmu_notifier *sub, struct mm_struct *mm,
			    unsigned long start, unsigned long end)
{
	struct mmnt_client *c = container_of(sub, struct mmnt_client, sub_a);
	struct mmnt_entry e;

	MMNT_ENTRY(e);
	mmnt_inject(c, MMNT_T_CLEAR_YOUNG);
	mmnt_record(c, &e, MMNT_T_CLEAR_YOUNG, -1, mm, start, end, true, 0);
	return 0;
}

static int mmnt_test_young(struct mmu_notifier *sub, struct mm_struct *mm,
			   unsigned long address)
{
	struct mmnt_client *c = container_of(sub, struct mmnt_client, sub_a);
	struct mmnt_entry e;

	MMNT_ENTRY(e);
	mmnt_inject(c, MMNT_T_TEST_YOUNG);
	mmnt_record(c, &e, MMNT_T_TEST_YOUNG, -1, mm, address,
		    address + PAGE_SIZE, true, 0);
	return 0;
}

#ifdef MMNT_HAVE_CHANGE_PTE
static void mmnt_change_pte(struct mmu_notifier *sub, struct mm_struct *mm,
			    unsigned long address, pte_t pte)
{
	struct mmnt_client *c = container_of(sub, struct mmnt_client, sub_a);
	struct mmnt_entry e;

	MMNT_ENTRY(e);
	mmnt_inject(c, MMNT_T_CHANGE_PTE);
	mmnt_record(c, &e, MMNT_T_CHANGE_PTE, -1, mm, address,
		    address + PAGE_SIZE, true, 0);
}
#endif

static const struct mmu_notifier_ops mmnt_ops_a = {
	.invalidate_range_start	= mmnt_invalidate_range_start,
	.invalidate_range_end	= mmnt_invalidate_range_end,
	.release		= mmnt_release,
	.clear_flush_young	= mmnt_clear_flush_young,
	.clear_young		= mmnt_clear_young,
	.test_young		= mmnt_test_young,
#ifdef MMNT_HAVE_CHANGE_PTE
	.change_pte		= mmnt_change_pte,
#endif
};

/* ---- subscription B: secondary TLB only --------------------------------- */

static void mmnt_secondary_tlb(struct mmu_notifier *sub, struct mm_struct *mm,
			       unsigned long start, unsigned long end)
{
	struct mmnt_client *c = container_of(sub, struct mmnt_client, sub_b);
	struct mmnt_entry e;

	MMNT_ENTRY(e);
	mmnt_inject(c, MMNT_T_SECONDARY_TLB);
	mmnt_record(c, &e, MMNT_T_SECONDARY_TLB, -1, mm, start, end, true, 0);
}

static const struct mmu_notifier_ops mmnt_ops_b = {
#ifdef MMNT_HAVE_ARCH_INVALIDATE_SECONDARY_TLBS
	.arch_invalidate_secondary_tlbs	= mmnt_secondary_tlb,
#else
	.invalidate_range		= mmnt_secondary_tlb,
#endif
};

/* ---- interval notifiers -------------------------------------------------- */

static __always_inline bool mmnt_interval_body(struct mmu_interval_notifier *sub,
					       const struct mmu_notifier_range *range,
					       unsigned long cur_seq, bool alt)
{
	struct mmnt_interval *iv = container_of(sub, struct mmnt_interval, notifier);
	struct mmnt_client *c = iv->client;
	struct mmnt_entry e;
	unsigned long flags;
	bool blockable;
	bool ret = true;

	MMNT_ENTRY(e);
	blockable = mmu_notifier_range_blockable(range);
	if (mmnt_inject(c, MMNT_T_INTERVAL) && !blockable)
		ret = false;
	if (ret) {
		spin_lock_irqsave(&c->lock, flags);
		mmu_interval_set_seq(sub, cur_seq);
		spin_unlock_irqrestore(&c->lock, flags);
	}
	mmnt_record(c, &e, MMNT_T_INTERVAL, range->event, range->mm,
		    range->start, range->end, blockable, ret);
	if (alt)	/* also keeps the two functions apart (no identical-code folding) */
		atomic64_inc(&c->alt_calls);
	return ret;
}

/* two ops tables, two functions: what a tracer must find is one per table */
static noinline bool mmnt_interval_invalidate(struct mmu_interval_notifier *sub,
					      const struct mmu_notifier_range *range,
					      unsigned long cur_seq)
{
	return mmnt_interval_body(sub, range, cur_seq, false);
}

static noinline bool mmnt_interval_invalidate_alt(struct mmu_interval_notifier *sub,
						  const struct mmu_notifier_range *range,
						  unsigned long cur_seq)
{
	return mmnt_interval_body(sub, range, cur_seq, true);
}

static const struct mmu_interval_notifier_ops mmnt_interval_ops = {
	.invalidate = mmnt_interval_invalidate,
};

static const struct mmu_interval_notifier_ops mmnt_interval_ops_alt = {
	.invalidate = mmnt_interval_invalidate_alt,
};

/* ---- client management (under c->ctl) ------------------------------------ */

static void mmnt_remove_intervals(struct mmnt_client *c)
{
	int i;

	for (i = 0; i < c->nr_ivals; i++)
		mmu_interval_notifier_remove(&c->ivals[i].notifier);
	c->nr_ivals = 0;
	if (c->ival_mm) {
		mmdrop(c->ival_mm);
		c->ival_mm = NULL;
	}
}

static void mmnt_unregister(struct mmnt_client *c)
{
	mmnt_remove_intervals(c);
	if (c->registered) {
		/* Fine even after ->release ran at mm exit: we hold mm_count. */
		mmu_notifier_unregister(&c->sub_b, c->mm);
		if (c->has_a)
			mmu_notifier_unregister(&c->sub_a, c->mm);
		c->registered = false;
	}
	if (c->mm) {
		mmdrop(c->mm);
		c->mm = NULL;
	}
}

static struct mm_struct *mmnt_get_mm_of_pid(pid_t nr)
{
	struct task_struct *task;
	struct mm_struct *mm;
	struct pid *pid;

	if (nr == 0)
		return get_task_mm(current);
	pid = find_get_pid(nr);
	if (!pid)
		return ERR_PTR(-ESRCH);
	task = get_pid_task(pid, PIDTYPE_PID);
	put_pid(pid);
	if (!task)
		return ERR_PTR(-ESRCH);
	mm = get_task_mm(task);
	put_task_struct(task);
	return mm;
}

static long mmnt_do_register(struct mmnt_client *c,
			     const struct mmnt_test_register *arg)
{
	struct mm_struct *mm;
	int ret;

	if (arg->flags & ~MMNT_REG_TLB_ONLY)
		return -EINVAL;
	if (c->registered)
		return -EBUSY;
	mm = mmnt_get_mm_of_pid(arg->pid);	/* mmget'ed */
	if (IS_ERR(mm))
		return PTR_ERR(mm);
	if (!mm)
		return -EINVAL;		/* kernel thread or exiting task */

	memset(&c->sub_a, 0, sizeof(c->sub_a));
	memset(&c->sub_b, 0, sizeof(c->sub_b));
	c->sub_a.ops = &mmnt_ops_a;
	c->sub_b.ops = &mmnt_ops_b;
	c->has_a = !(arg->flags & MMNT_REG_TLB_ONLY);
	ret = c->has_a ? mmu_notifier_register(&c->sub_a, mm) : 0;
	if (ret)
		goto out;
	ret = mmu_notifier_register(&c->sub_b, mm);
	if (ret) {
		if (c->has_a)
			mmu_notifier_unregister(&c->sub_a, mm);
		goto out;
	}
	mmgrab(mm);
	c->mm = mm;
	c->registered = true;
out:
	mmput(mm);
	return ret;
}

static long mmnt_do_interval(struct mmnt_client *c,
			     const struct mmnt_test_interval *arg,
			     const struct mmu_interval_notifier_ops *ops)
{
	struct mmnt_interval *iv;
	struct mm_struct *mm;
	int ret;

	if (!arg->length || (arg->start & ~PAGE_MASK) ||
	    arg->start + arg->length < arg->start)
		return -EINVAL;
	if (c->nr_ivals >= MMNT_MAX_INTERVALS)
		return -ENOSPC;

	if (!c->ival_mm) {
		if (c->registered) {
			mm = c->mm;
		} else {
			mm = current->mm;
			if (!mm)
				return -EINVAL;
		}
		mmgrab(mm);
		c->ival_mm = mm;
	}
	mm = c->ival_mm;
	/* Insert may register on the mm, which needs mm_users > 0. */
	if (!mmget_not_zero(mm))
		return -ESRCH;

	iv = &c->ivals[c->nr_ivals];
	memset(iv, 0, sizeof(*iv));
	iv->client = c;
	ret = mmu_interval_notifier_insert(&iv->notifier, mm, arg->start,
					   arg->length, ops);
	mmput(mm);
	if (ret)
		return ret;
	c->nr_ivals++;
	return 0;
}

static long mmnt_ioctl(struct file *file, unsigned int cmd, unsigned long uarg)
{
	struct mmnt_client *c = file->private_data;
	void __user *up = (void __user *)uarg;
	long ret = 0;

	if (cmd == MMNT_IOC_DSLEEP) {	/* no client state: never under c->ctl */
		__u32 ms;

		if (get_user(ms, (__u32 __user *)up))
			return -EFAULT;
		msleep(min_t(__u32, ms, 60000));
		return 0;
	}
	mutex_lock(&c->ctl);
	switch (cmd) {
	case MMNT_IOC_INFO: {
		struct mmnt_test_info info = {
			.features = MMNT_FEATURES,
			.record_size = sizeof(struct mmnt_test_record),
			.log_capacity = MMNT_LOG_CAPACITY,
		};

		if (copy_to_user(up, &info, sizeof(info)))
			ret = -EFAULT;
		break;
	}
	case MMNT_IOC_REGISTER: {
		struct mmnt_test_register reg;

		if (copy_from_user(&reg, up, sizeof(reg)))
			ret = -EFAULT;
		else
			ret = mmnt_do_register(c, &reg);
		break;
	}
	case MMNT_IOC_UNREGISTER:
		mmnt_unregister(c);
		break;
	case MMNT_IOC_INTERVAL:
	case MMNT_IOC_INTERVAL_ALT: {
		struct mmnt_test_interval iv;

		if (copy_from_user(&iv, up, sizeof(iv)))
			ret = -EFAULT;
		else
			ret = mmnt_do_interval(c, &iv, cmd == MMNT_IOC_INTERVAL ?
					       &mmnt_interval_ops : &mmnt_interval_ops_alt);
		break;
	}
	case MMNT_IOC_BEHAVE: {
		struct mmnt_test_behave b;

		if (copy_from_user(&b, up, sizeof(b))) {
			ret = -EFAULT;
			break;
		}
		if (b.hook >= MMNT_T_NR_HOOKS || b.behaviour > MMNT_B_EAGAIN) {
			ret = -EINVAL;
			break;
		}
		WRITE_ONCE(c->behave[b.hook].behaviour, MMNT_B_NONE);
		WRITE_ONCE(c->behave[b.hook].arg, b.arg);
		atomic_set(&c->behave[b.hook].left, b.count);
		WRITE_ONCE(c->behave[b.hook].limited, b.count ? 1 : 0);
		WRITE_ONCE(c->behave[b.hook].behaviour, b.behaviour);
		break;
	}
	case MMNT_IOC_COUNTS: {
		struct mmnt_test_counts counts;
		unsigned long flags;

		spin_lock_irqsave(&c->lock, flags);
		counts = c->counts;
		/* Under the lock: a callback is counted iff it logged before read_ns. */
		counts.read_ns = ktime_get_ns();
		spin_unlock_irqrestore(&c->lock, flags);
		if (copy_to_user(up, &counts, sizeof(counts)))
			ret = -EFAULT;
		break;
	}
	case MMNT_IOC_RESET: {
		unsigned long flags;

		spin_lock_irqsave(&c->lock, flags);
		memset(&c->counts, 0, sizeof(c->counts));
		c->counts.reset_ns = ktime_get_ns();
		c->head = 0;
		c->count = 0;
		spin_unlock_irqrestore(&c->lock, flags);
		break;
	}
	default:
		ret = -ENOTTY;
	}
	mutex_unlock(&c->ctl);
	return ret;
}

static ssize_t mmnt_read(struct file *file, char __user *buf, size_t len,
			 loff_t *ppos)
{
	struct mmnt_client *c = file->private_data;
	const size_t rsz = sizeof(struct mmnt_test_record);
	struct mmnt_test_record *bounce;
	size_t want = len / rsz;
	ssize_t done = 0;

	if (!want)
		return -EINVAL;
	bounce = kmalloc_array(MMNT_READ_CHUNK, rsz, GFP_KERNEL);
	if (!bounce)
		return -ENOMEM;

	mutex_lock(&c->ctl);
	while (want) {
		unsigned long flags;
		u32 n, i;

		/* Peek under the spinlock, copy out without it, then consume. */
		spin_lock_irqsave(&c->lock, flags);
		n = min_t(u32, c->count, min_t(size_t, want, MMNT_READ_CHUNK));
		for (i = 0; i < n; i++)
			bounce[i] = c->log[(c->head + i) % MMNT_LOG_CAPACITY];
		spin_unlock_irqrestore(&c->lock, flags);
		if (!n)
			break;
		if (copy_to_user(buf + done, bounce, n * rsz)) {
			if (!done)
				done = -EFAULT;
			break;
		}
		spin_lock_irqsave(&c->lock, flags);
		c->head = (c->head + n) % MMNT_LOG_CAPACITY;
		c->count -= n;
		spin_unlock_irqrestore(&c->lock, flags);
		done += n * rsz;
		want -= n;
	}
	mutex_unlock(&c->ctl);
	kfree(bounce);
	return done;
}

static int mmnt_open(struct inode *inode, struct file *file)
{
	struct mmnt_client *c;

	c = kzalloc(sizeof(*c), GFP_KERNEL);
	if (!c)
		return -ENOMEM;
	c->log = vmalloc(array_size(MMNT_LOG_CAPACITY,
				    sizeof(struct mmnt_test_record)));
	if (!c->log) {
		kfree(c);
		return -ENOMEM;
	}
	mutex_init(&c->ctl);
	spin_lock_init(&c->lock);
	c->counts.reset_ns = ktime_get_ns();
	file->private_data = c;
	return nonseekable_open(inode, file);
}

static int mmnt_release_file(struct inode *inode, struct file *file)
{
	struct mmnt_client *c = file->private_data;

	mutex_lock(&c->ctl);
	mmnt_unregister(c);
	mutex_unlock(&c->ctl);
	vfree(c->log);
	kfree(c);
	return 0;
}

static const struct file_operations mmnt_fops = {
	.owner		= THIS_MODULE,
	.open		= mmnt_open,
	.release	= mmnt_release_file,
	.read		= mmnt_read,
	.unlocked_ioctl	= mmnt_ioctl,
	.compat_ioctl	= compat_ptr_ioctl,
};

static struct miscdevice mmnt_misc = {
	.minor	= MISC_DYNAMIC_MINOR,
	.name	= "mmnt_test",
	.fops	= &mmnt_fops,
	.mode	= 0666,
};

static int __init mmnt_init(void)
{
	return misc_register(&mmnt_misc);
}

static void __exit mmnt_exit(void)
{
	/* Open files pin the module, so no client is left here. */
	misc_deregister(&mmnt_misc);
	/* Wait for SRCU callbacks of unregistered notifiers to finish. */
	mmu_notifier_synchronize();
}

module_init(mmnt_init);
module_exit(mmnt_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("mmntrace test secondary-MMU driver (ground truth for the tracer)");
