"""Before and after, at the same moment: two flashguard servers saturated side by side on one core.

On a shared VM the core's speed moves by a third between two runs a minute apart, more than most
changes are worth, so "before" and "after" measured one after the other mostly measure the
neighbours. Here both run at once: `bench.flash_sale --saturate` twice, one on a git worktree of
`--ref` and one on this checkout, each server pinned to the same core (its load to the other).
The kernel gives the two servers the core in equal shares, so whatever slows the core slows
both, and the ratio of their checks/s is the ratio of their costs per check. A run of the same
code against itself gives 0.98-1.02.

    python -m bench.paired                        # this checkout against HEAD, 3 rounds
    python -m bench.paired --ref HEAD~2 --rounds 5

Prints one JSON line: each round's checks/s of both and their ratio, and the median ratio (above
1: this checkout does more checks a second).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def saturate(checkout: Path, seconds: float) -> subprocess.Popen[str]:
    """`bench.flash_sale --saturate` on `checkout`'s code (its packages first on the path)."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    args = ["--systems", "flashguard", "--saturate", "--sat-seconds", str(seconds), "--warmup", "3", "--report", "-"]
    return subprocess.Popen([sys.executable, "-m", "bench.flash_sale", *args], cwd=checkout, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip


def checks_per_s(proc: subprocess.Popen[str]) -> float:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"bench.flash_sale exited {proc.returncode}")
    result: dict[str, Any] = json.loads(out.splitlines()[0])
    return float(result["saturated"]["checks_per_s"])


def run(ref: str, rounds: int, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="flashguard-paired-") as tmp:
        before = Path(tmp) / "ref"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(before), ref], check=True)
        try:
            measured = []
            for _ in range(rounds):
                ref_proc, this_proc = saturate(before, seconds), saturate(ROOT, seconds)
                ref_rate, this_rate = checks_per_s(ref_proc), checks_per_s(this_proc)
                measured.append({"ref": ref_rate, "this": this_rate, "ratio": round(this_rate / ref_rate, 3)})
                print(json.dumps(measured[-1]), file=sys.stderr, flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)], check=False)
    return {
        "bench": "paired",
        "ref": ref,
        "rounds": measured,
        "median_ratio": round(statistics.median(r["ratio"] for r in measured), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", default="HEAD", help="the git revision to compare this checkout with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds of each saturation")
    args = parser.parse_args()
    print(json.dumps(run(args.ref, args.rounds, args.seconds)))


if __name__ == "__main__":
    main()
