"""The crossed and global design benchmark (issue #19): wall time against the estimate.

Runs ``python -m bench.ablate`` with ``--cross`` (or ``--global N``) in a fresh folder (no
history, so the up-front estimate is the prior's), measures the wall time, and prints one JSON
line: the plan, the estimate, the measured seconds, their ratio and the headlines. Give it the
two cores alone.

    python benchmarks/crossed.py --out /tmp/crossed.json -- \\
        --base-config benchmarks/ablate_base.yaml --space mlp \\
        --cross normalization,optimizer --seeds 3
    python benchmarks/crossed.py --out /tmp/global.json -- \\
        --global 64 --space mlp --seeds 3
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

UNITS = {"s": 1, "min": 60, "h": 3600}


def _seconds(text: str) -> float:
    number, unit = text.split()
    return float(number) * UNITS[unit]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="also write the JSON line here")
    p.add_argument("--folder", help="run in this (empty) folder instead of a temporary one")
    p.add_argument("ablate_args", nargs=argparse.REMAINDER, help="-- then bench.ablate's flags")
    args = p.parse_args()
    flags = [a for a in args.ablate_args if a != "--"]
    repo = Path(__file__).resolve().parent.parent
    flags = [str(repo / f) if f.startswith("benchmarks/") else f for f in flags]
    folder = Path(args.folder or tempfile.mkdtemp(prefix="crossed-"))
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "bench.ablate", *flags, "--quiet"],
        cwd=folder, capture_output=True, text=True,
    )  # fmt: skip
    wall = time.perf_counter() - start
    (folder / "stdout.txt").write_text(proc.stdout)
    (folder / "stderr.txt").write_text(proc.stderr)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        return proc.returncode
    m = re.search(r"estimated time: about ([\d.]+ (?:s|min|h)) .*at most ([\d.]+ (?:s|min|h))",
                  proc.stderr)  # fmt: skip
    lines = proc.stderr.splitlines()
    plan = next((ln for ln in lines if ln.startswith(("crossed:", "global:"))), "")
    estimate = _seconds(m.group(1)) if m else None
    heads = [ln.strip() for ln in proc.stdout.splitlines() if re.match(r"\s*\d+\. ", ln)]
    result = {
        "folder": str(folder),
        "plan": plan,
        "estimate_s": estimate,
        "full_budget_s": _seconds(m.group(2)) if m else None,
        "wall_s": round(wall, 1),
        "estimate_error": round(estimate / wall - 1, 3) if estimate else None,
        "headlines": heads,
    }
    line = json.dumps(result)
    print(line)
    if args.out:
        Path(args.out).write_text(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
