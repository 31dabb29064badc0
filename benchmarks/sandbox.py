"""What the code interpreter's sandbox costs: a trivial program run through `Sandbox.run`
(bubblewrap, namespaces, supervisor, report) against the same program in a plain
`python3 -I -c` subprocess, in the same run. Prints medians and the ratio.

    python benchmarks/sandbox.py [--runs 30]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from relaybus.agents.settings import CodeSettings
from relaybus.agents.tools.sandbox import Limits, Sandbox

PROGRAM = "print(sum(range(1000)))"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    sandbox = Sandbox(CodeSettings())
    limits = Limits(5, 10, 256, 16, 65536, 8)
    sandbox.check()
    plain, boxed = [], []
    for _ in range(max(1, min(args.runs, 500))):
        started = time.perf_counter()
        out = subprocess.run([sandbox.python, "-I", "-c", PROGRAM], capture_output=True, timeout=30)
        plain.append(time.perf_counter() - started)
        started = time.perf_counter()
        report = sandbox.run(PROGRAM, {}, limits)
        boxed.append(time.perf_counter() - started)
        if out.stdout.decode() != report.stdout or report.exit_code != 0:
            print(f"wrong result: {report}", file=sys.stderr)
            return 1
    p, b = statistics.median(plain), statistics.median(boxed)
    print(f"plain python subprocess: p50 {p * 1000:.1f} ms")
    print(f"sandboxed run_code:      p50 {b * 1000:.1f} ms  ({b / p:.1f}x plain)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
