"""The words gates' share of no-copy images still verifying, by index size and background.

Reads the tables that ``band_words_probe.py`` prints (one log per index size) and plots, for one
gate (band / words ratio, queries under EXEMPT words exempt), the share of images with no copy
that still verify something against the number of references, one line per background. Session
18: the sample's quantile (session 17) lets ever more of them through as the index grows, the
17th..48th nearest (session 16) too many in a small index, the higher of the two neither.

    .venv/bin/python docs/analysis/band_words_sizes.py OUT.png LOG [LOG ...]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

GATE = ("1.25", "1.75", "250")  # band ratio, words ratio, exempt under this many words (the defaults)


def read(log: Path) -> tuple[int, dict[str, tuple[float, float]]]:
    """(references, {background: (no-copy share verifying, tight crops' originals verified)})."""
    text = log.read_text()
    refs = int(re.search(r"^refs (\d+)", text, re.M).group(1))  # type: ignore[union-attr]
    out = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > 6 and tuple(cells[1:4]) == GATE:
            out[cells[0]] = (float(cells[4]), float(cells[6]))
    return refs, out


def main(png: str, logs: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted(read(Path(p)) for p in logs)
    fig, ax = plt.subplots(figsize=(6.4, 4))
    styles = {"nearest": ("o:", "17th-48th nearest (session 16)", (4, 6)),
              "sample": ("s--", "sample quantile (session 17)", (-30, 6)),
              "higher": ("D-", "the higher of the two (session 18)", (4, -12))}
    for bg, (style, label, offset) in styles.items():
        rows = [(refs, found[bg]) for refs, found in points if bg in found]
        ax.plot([r for r, _ in rows], [100 * v[0] for _, v in rows], style, label=label)
        for refs, (share, _tight) in rows:
            ax.annotate(f"{100 * share:.1f} %", (refs, 100 * share), fontsize=7, xytext=offset,
                        textcoords="offset points")
    ax.set_xlabel("references in the index")
    ax.set_ylabel("images with no copy still verifying (%)")
    ax.set_ylim(0, 65)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Words gates {GATE[0]} / {GATE[1]} (queries under {GATE[2]} words exempt), photos outside "
                 "the dev set", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    for refs, found in points:
        print(refs, {bg: v for bg, v in found.items()})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
