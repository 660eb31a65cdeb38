#!/usr/bin/env python3
"""What one SSH connection costs, by key exchange: 20 sequential `ssh HOST
true` to one benchmark worker, wall time and the client's CPU time per
connection. The `ssh true` floor (and every tool) pays this once per host.

    python3 bench/handshake.py
"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

ROUNDS = 20


def main():
    base = Path(tempfile.mkdtemp(prefix="cutover-handshake-"))
    (base / "fleet").mkdir()
    fleet = bench.Fleet(1, base / "fleet")
    try:
        for kex in ["(default)", "sntrup761x25519-sha512@openssh.com", "curve25519-sha256"]:
            opt = [] if kex == "(default)" else ["-o", f"KexAlgorithms={kex}"]
            cmd = ["ssh", "-F", str(fleet.ssh_config), *opt, "w1", "true"]
            subprocess.run(cmd, check=True)
            t0, c0 = time.monotonic(), os.times()
            for _ in range(ROUNDS):
                subprocess.run(cmd, check=True)
            t1, c1 = time.monotonic(), os.times()
            cpu = (c1.children_user + c1.children_system - c0.children_user - c0.children_system)
            print(f"{kex:36s} {1000 * (t1 - t0) / ROUNDS:6.1f} ms wall, "
                  f"{1000 * cpu / ROUNDS:5.1f} ms client CPU per connection")
    finally:
        fleet.stop()


if __name__ == "__main__":
    main()
