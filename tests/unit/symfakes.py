"""A tracer and a kernel's features for symbolizing records without a kernel,
and a batch of records (test_symbolize, test_segment_tables). No pandas here:
the segment test imports it in a process that must not load it."""

import numpy as np

from mmntrace import kernel
from mmntrace.layout import record_dtype

STACKS = {
    1: ["flush_tlb_mm_range+0x10", "__mmu_notifier_arch_invalidate_secondary_tlbs+0x20", "zap_pte_range+0x5"],
    2: ["__mmu_notifier_invalidate_range_start+0x20", "zap_page_range_single+0x5", "do_madvise+0x99"],
    3: ["wp_page_reuse+0x3", "__mmu_notifier_arch_invalidate_secondary_tlbs+0x20"],
}


class FakeTracer:
    def stack(self, sid):
        return list(STACKS.get(sid, []))

    def ksym(self, addr):
        return {0x1000: "mutex_lock", 0x2000: "__kmalloc", 0x3000: "tlb_finish_mmu+0x174"}.get(addr)

    def callback_symbol(self, addr):
        return {0xa: "kvm_mmu_notifier_invalidate_range_start [kvm]", 0xb: "mmnt_secondary_tlb [mmnt_test]"}.get(addr)


class Features:
    hooks = ((kernel.HOOK_START, "__mmu_notifier_invalidate_range_start", "invalidate_range_start"),
             (kernel.HOOK_SECONDARY_TLB, "__mmu_notifier_arch_invalidate_secondary_tlbs", "secondary_tlb"))
    events = ((0, "unmap"), (1, "clear"))


def batch(n=400, rtype=2):
    rng = np.random.default_rng(7)
    a = np.zeros(n, record_dtype())
    a["type"] = rtype
    a["hook"] = rng.choice([kernel.HOOK_START, kernel.HOOK_SECONDARY_TLB], n)
    a["event"] = rng.integers(-1, 2, n)
    a["stack_id"] = rng.integers(-1, 4, n)
    a["func"] = rng.choice([0, 0xa, 0xb, 0xc], n)
    a["kind"] = rng.choice([kernel.HOOK_START, kernel.HOOK_NONE, 1, 2], n) if rtype != 3 else rng.choice([1, 2, 9], n)
    a["addr"] = rng.choice([0, 0x1000, 0x2000, 0x3000], n)
    a["seq"] = np.arange(n)
    a["comm"] = b"qemu"
    return a
