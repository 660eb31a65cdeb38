#!/usr/bin/env python3
"""The state backends side by side: the bench's job (300 files, about
30 MB) on a loopback fleet of N real sshd workers, deployed by one cutover
binary from two projects, one on the embedded SQLite store and one on a
PostgreSQL server this script starts (initdb as the postgres user, a free
port on 127.0.0.1, stopped by pid at the end).

Rounds alternate between the two, so that drift slows both alike; each
round: A first deploy, B no-op redeploy, C one small file changed. Every
run is checked on every worker (tree, running, restart count). A benchmark,
never a test: nothing here asserts a time.

    python3 bench/state.py --cutover target/release/cutover --n 40 --runs 5
"""

import argparse
import glob
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench import Cutover, Fleet, free_port, make_tree, timed, verify  # noqa: E402


class Postgres:
    """A PostgreSQL server of its own, as the postgres user."""

    def __init__(self, base: Path):
        bindir = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1]
        self.bin = Path(bindir)
        self.dir = base / "pg"
        self.dir.mkdir()
        shutil.chown(self.dir, "postgres", "postgres")
        os.chmod(base, 0o755)
        subprocess.run([str(self.bin / "initdb"), "-D", str(self.dir / "data"), "-U", "postgres",
                        "--auth=trust", "-E", "UTF8", "--locale=C"],
                       check=True, user="postgres", stdout=subprocess.DEVNULL)
        self.port = free_port("127.0.0.1")
        # The server as an operator's would run: durable commits (fsync on).
        self.proc = subprocess.Popen(
            [str(self.bin / "postgres"), "-D", str(self.dir / "data"), "-p", str(self.port),
             "-k", str(self.dir), "-c", "listen_addresses=127.0.0.1"],
            user="postgres", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while subprocess.run(self.psql("postgres", "SELECT 1"), capture_output=True).returncode:
            if time.time() > deadline:
                raise SystemExit("postgres did not start")
            time.sleep(0.1)

    def psql(self, db, sql):
        return [str(self.bin / "psql"), "-X", "-q", "-h", str(self.dir), "-p", str(self.port),
                "-U", "postgres", "-d", db, "-c", sql]

    def fresh(self, db):
        subprocess.run(self.psql("postgres", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
                       check=True, capture_output=True)
        subprocess.run(self.psql("postgres", f"CREATE DATABASE {db}"), check=True, capture_output=True)
        return f"postgres://postgres@127.0.0.1:{self.port}/{db}"

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait()


class Backend(Cutover):
    """A cutover project on one backend, deploying to `<root>/<name>`."""

    def __init__(self, fleet, src, work, binary, name, pg=None):
        super().__init__(fleet, src, work, binary, name=name)
        self.pg = pg
        self.env = dict(os.environ)
        (self.proj / "workers.toml").write_text("".join(
            f'[[worker]]\nname = "{w["name"]}"\nhost = "{w["ip"]}"\nport = {w["port"]}\n'
            f'root = "{w["root"]}/{name}"\n\n' for w in fleet.workers))
        if pg:
            with open(self.proj / "cutover.toml", "a") as f:
                f.write('[state]\nbackend = "postgres"\n')

    def reset(self):
        self.fleet.wipe(self.name)
        shutil.rmtree(self.proj / ".cutover", ignore_errors=True)
        if self.pg:
            self.env["CUTOVER_STATE_URL"] = self.pg.fresh("bench")

    def deploy(self):
        return timed([self.bin, "deploy", "--progress=never"], cwd=self.proj, env=self.env)

    def app_dir(self, w):
        return w["root"] / f"{self.name}/jobs/bench/current"

    def state_dir(self, w):
        return w["root"] / f"{self.name}/jobs/bench/shared"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cutover", default="target/release/cutover")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    binary = str(Path(args.cutover).resolve())
    base = Path(tempfile.mkdtemp(prefix="cutover-state-bench-"))
    fleet = pg = None
    try:
        src = base / "src"
        make_tree(src)
        fleet = Fleet(args.n, base)
        pg = Postgres(base)
        tools = [Backend(fleet, src, base, binary, "sqlite"),
                 Backend(fleet, src, base, binary, "postgres", pg)]
        res = {t.name: {"A": [], "B": [], "C": []} for t in tools}
        small_rel = Path("src/d0/sub0/file0.txt")
        for r in range(args.runs):
            for t in tools if r % 2 == 0 else reversed(tools):
                small = t.tree() / small_rel
                original = small.read_text() if r == 0 else small.read_text().split("changed in run")[0]
                t.reset()
                small.write_text(original)
                res[t.name]["A"].append(t.deploy()[0]); verify(t, fleet, 1, 0, f"A run {r + 1}")
                res[t.name]["B"].append(t.deploy()[0]); verify(t, fleet, 1, 0, f"B run {r + 1}")
                small.write_text(original + f"changed in run {r}\n")
                res[t.name]["C"].append(t.deploy()[0]); verify(t, fleet, 1, 1, f"C run {r + 1}")
                print(f"  {t.name} run {r + 1}: " + ", ".join(
                    f"{k} {v[-1]:.2f}s" for k, v in res[t.name].items()), flush=True)
        med = {t: {k: statistics.median(v) for k, v in s.items()} for t, s in res.items()}
        print(f"\nN = {args.n}, medians of {args.runs} rounds (seconds)\n")
        print("| scenario | sqlite | postgres | postgres / sqlite |")
        print("|---|---|---|---|")
        for k, label in [("A", "A first deploy"), ("B", "B no-op"), ("C", "C one file")]:
            a, b = med["sqlite"][k], med["postgres"][k]
            print(f"| {label} | {a:.2f} | {b:.2f} | {b / a:.2f} |")
    finally:
        if pg:
            pg.stop()
        if fleet:
            fleet.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
