"""Every argsort and sort_values in mmntrace is stable (docs/reliability.md,
"numpy's default argsort"): numpy's default argsort returns unsorted orders
in the lab's QEMU guests, so a default-kind one there is a bug that only the
lab shows, at random."""

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "mmntrace"


def _calls(text: str, name: str):
    """The argument text of each call of ``name`` (balanced parentheses)."""
    for m in re.finditer(rf"\b{name}\(", text):
        depth, i = 1, m.end()
        while depth and i < len(text):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        yield text.count("\n", 0, m.start()) + 1, text[m.end():i - 1]


def test_every_argsort_and_sort_values_says_stable():
    bad = []
    for f in sorted(SRC.rglob("*.py")):
        text = f.read_text()
        for name in ("argsort", "sort_values"):
            for line, args in _calls(text, name):
                if 'kind="stable"' not in args and "kind='stable'" not in args:
                    bad.append(f"{f.relative_to(SRC.parent)}:{line}: {name}({args.strip()[:60]})")
    assert not bad, "default-kind sorts (unsorted in the lab's guests):\n" + "\n".join(bad)


def test_the_check_sees_a_default_kind_call():
    calls = list(_calls("x = np.argsort(a[b(c)])\ny = df.sort_values(['n'], kind=\"stable\")\n", "argsort"))
    assert calls == [(1, "a[b(c)]")] and 'kind="stable"' not in calls[0][1]
