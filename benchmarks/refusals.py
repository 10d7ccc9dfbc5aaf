"""How fast bad input is refused, and whether every promise holds: each case of
Testing/bad_inputs.py (truncated and odd files, damaged model configs, landmarks, output folders,
damaged training runs, evaluate options) run as a real `unleash` process, as a user would.

    .venv/bin/python benchmarks/refusals.py [--json benchmarks/results/refusals_cpu.json]

Per case: wall seconds from process start to exit, and kept (one 'unleash: error:' line naming
the problem, a non-zero exit, no file changed or added, no temporary folder left) or what broke.
The target is under 2 s a refusal. Reference, measured side by side in the same run (so that a
loaded machine inflates both alike): the process that only starts and prints the version.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "Testing")]

from bad_inputs import CASES, make_fixtures, snapshot, verdict  # noqa: E402

TARGET_S = 2.0
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def timed(argv: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    job = subprocess.run([sys.executable, "-m", "unleash", *argv], capture_output=True, text=True, cwd=cwd, env=ENV,
                         timeout=600)
    return time.perf_counter() - start, job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the per-case results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        fixtures = make_fixtures(root)
        baseline = [timed(["--version"], root)[0] for _ in range(3)]
        results = []
        for index, case in enumerate(CASES):
            workspace = root / f"case_{index:02d}"
            workspace.mkdir()
            argv = case.make(workspace, fixtures)
            before = snapshot(workspace)
            seconds, job = timed(argv, workspace)
            broken = verdict(job.returncode, job.stderr, case.expected, before, snapshot(workspace), workspace)
            results.append({"class": case.kind, "case": case.name, "seconds": round(seconds, 2), "kept": broken is None,
                            "broken": broken, "line": job.stderr.strip().splitlines()[-1] if job.stderr.strip() else ""})
            print(f"{case.kind:<18} {case.name:<48} {seconds:6.2f} s  {'kept' if broken is None else 'BROKEN: ' + broken}",
                  flush=True)
    by_class = defaultdict(list)
    for result in results:
        by_class[result["class"]].append(result)
    print(f"\n{'class':<18} {'cases':>5} {'kept':>5} {'median s':>9} {'max s':>6}")
    for kind, rows in by_class.items():
        times = [r["seconds"] for r in rows]
        print(f"{kind:<18} {len(rows):5d} {sum(r['kept'] for r in rows):5d} {statistics.median(times):9.2f} {max(times):6.2f}")
    times = [r["seconds"] for r in results]
    print(f"{'all':<18} {len(results):5d} {sum(r['kept'] for r in results):5d} {statistics.median(times):9.2f} "
          f"{max(times):6.2f}")
    print(f"\nreference, `unleash --version` in the same run: median {statistics.median(baseline):.2f} s; "
          f"target: every refusal under {TARGET_S:.0f} s; {sum(t < TARGET_S for t in times)} of {len(times)} were")
    if args.json:
        Path(args.json).write_text(json.dumps({"target_s": TARGET_S, "version_only_s": baseline, "cases": results},
                                              indent=1) + "\n")


if __name__ == "__main__":
    main()
