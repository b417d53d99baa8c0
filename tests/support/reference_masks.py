"""The attention mask of every layout, written loop by loop from docs/step-jepa.md.

Deliberately naive (plain Python, one cell at a time, straight from the table in section 3
and the text of section 5), so that test_masks.py and test_collate.py check the vectorised
builders against something that shares no code with them.
"""

from __future__ import annotations


def ref_mask(layout: str, n: int, s1: int, s2: int, k: int, valid: bool, total: int) -> list[list[bool]]:
    """Query i may attend key j, for one example right-padded to `total` positions."""
    kk = k if valid else 0
    m = (s2 - s1) if valid else 0
    rows = []
    for i in range(total):
        row = []
        for j in range(total):
            if layout == "causal":
                ok = j <= i if i < n else j == i
            elif layout in ("inline", "two_pass"):
                start, end = s1 + kk + 1, s2 + kk  # S and E of the table
                if i >= n + kk:
                    ok = j == i  # padding sees itself only
                elif valid and start <= i <= end:
                    ok = start <= j <= i  # Step 2 isolated
                else:
                    ok = j <= i  # prompt, Step 1, predictors, Step 3+
            else:  # packed: plain row | K predictors | Step-2 copy
                if i < n:
                    ok = j <= i
                elif i < n + kk:
                    ok = j <= s1 or n <= j <= i
                elif i < n + kk + m:
                    ok = n + kk <= j <= i
                else:
                    ok = j == i
            row.append(ok)
        rows.append(row)
    return rows
