#!/usr/bin/env python3
"""Where one deploy's time goes: brings up the benchmark's fleet of N sshd
workers, deploys the benchmark job once (scenario A), then changes one small
file and deploys again (scenario C) with every per-host step printed, each
line stamped with the seconds since the start. It also prints how busy the
machine's CPUs were during the run, and with --perf records a system-wide
`perf record -e cpu-clock` profile of it (then: perf report -i FILE --sort comm).

    python3 bench/timeline.py --n 40 --cutover target/release/cutover [--perf /tmp/c.perf]
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402


def cpu_ticks():
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return sum(v) - v[3] - v[4], sum(v)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--cutover", required=True)
    ap.add_argument("--perf", help="write a perf profile of the C run here")
    a = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="cutover-timeline-"))
    (base / "fleet").mkdir()
    fleet = bench.Fleet(a.n, base / "fleet")
    try:
        src = base / "src"
        bench.make_tree(src)
        tool = bench.Cutover(fleet, src, base, str(Path(a.cutover).resolve()))
        tool.reset()
        wall, cpu, rss = tool.deploy()
        print(f"A: {wall:.2f}s (cutover and children: {cpu:.2f}s CPU, {rss:.0f} MB)")
        small = tool.tree() / "src/d0/sub0/file0.txt"
        small.write_text(small.read_text() + "changed\n")
        perf = None
        if a.perf:
            perf = subprocess.Popen(["perf", "record", "-a", "-e", "cpu-clock", "-o", a.perf],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
        busy0 = cpu_ticks()
        start = time.monotonic()
        p = subprocess.Popen([tool.bin, "deploy", "--progress=always"], cwd=tool.proj,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in p.stdout:
            print(f"{time.monotonic() - start:7.3f} {line}", end="")
        rc = p.wait()
        wall = time.monotonic() - start
        busy1 = cpu_ticks()
        if perf:
            perf.send_signal(2)
            perf.wait()
        busy = (busy1[0] - busy0[0]) / (busy1[1] - busy0[1])
        print(f"C: {wall:.2f}s, exit {rc}, CPUs {100 * busy:.0f}% busy")
        bench.verify(tool, fleet, 1, 1, "C")
    finally:
        fleet.stop()


if __name__ == "__main__":
    main()
