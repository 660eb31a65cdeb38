#!/usr/bin/env python3
"""Release channels, measured in one run on the bench's job (300 files,
about 30 MB) and a loopback fleet of real sshd workers:

- publish: `cutover publish` (pack, zstd -19, sha256, store, sign) against
  its floor, `tar --sort=name` of the same tree piped to `zstd -19`, plus
  `sha256sum` of the result;
- index verification: the cutover-index crate's own bench (release build),
  median time of one `verify` of an index with many versions;
- canary + promote of a one-file change at N workers against the deploy C
  scenario (one small file changed, rolling batches of 5) on the same
  fleet.

Every rollout is checked on every worker (the tree is the published one,
the service runs, restarted exactly once). A benchmark, never a test:
nothing here asserts a time.

    python3 bench/channels.py --cutover target/release/cutover --n 40 --runs 3
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench import BATCH, Fleet, make_tree, timed  # noqa: E402


def med(xs):
    return statistics.median(xs)


def job_toml(version, canary):
    text = (f'version = "{version}"\nrestart_policy = "always"\n'
            f"max_concurrent_starts = {BATCH}\nmax_concurrent_upgrades = {BATCH}\n"
            '[health]\ncommand = "make -s health"\nattempts = 20\ninterval = "50ms"\n')
    if canary:
        text += '[canary]\ncount = 1\nsoak = "1s"\n'
    return text


class Moto:
    """moto_server (a real S3 API) from target/moto-venv, on a free port."""

    def __init__(self, root):
        import socket
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        venv = root / "target/moto-venv/bin"
        self.proc = subprocess.Popen([str(venv / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.port}", "AWS_ALLOW_HTTP": "true",
                    "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"}
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise SystemExit("moto_server did not start")
                time.sleep(0.1)
        subprocess.run([str(venv / "python"), "-c",
                        "import boto3,sys; boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1',"
                        " aws_access_key_id='b', aws_secret_access_key='b').create_bucket(Bucket='bench')",
                        self.env["AWS_ENDPOINT_URL"]], check=True)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


class Project:
    def __init__(self, fleet, src, work, binary, name, store=None, fetch=False):
        self.bin, self.fleet = binary, fleet
        self.dir = work / name
        self.job = self.dir / "jobs" / "bench"
        self.job.parent.mkdir(parents=True)
        shutil.copytree(src, self.job, symlinks=True)
        store_cfg = ""
        if store:
            keys = work / f"{name}-keys"
            subprocess.run([binary, "keys", "generate", "--out", str(keys)], check=True,
                           stdout=subprocess.DEVNULL, cwd=work)
            self.key = str(keys / "cutover-signing.key")
            url = store if str(store).startswith("s3://") else f"file://{store}"
            store_cfg = (f'[store]\nurl = "{url}"\nworker_fetch = {"true" if fetch else "false"}\n'
                         f'[trust]\npublic_keys = ["{keys}/cutover-signing.pub"]\n')
        (self.dir / "cutover.toml").write_text(
            f'name = "bench"\n[ssh]\nuser = "root"\nidentity_file = "{fleet.key}"\n'
            f'known_hosts_file = "{fleet.known_hosts}"\nmax_parallel = 256\n' + store_cfg)
        (self.dir / "workers.toml").write_text("".join(
            f'[[worker]]\nname = "{w["name"]}"\nhost = "{w["ip"]}"\nport = {w["port"]}\n'
            f'root = "{w["root"]}/{name}"\n\n' for w in fleet.workers))

    env = None

    def run(self, *args):
        env = dict(os.environ, **self.env) if self.env else None
        return timed([self.bin, *args, "--progress=never"], cwd=self.dir, env=env)

    def events(self, w):
        p = w["root"] / self.dir.name / "jobs/bench/shared/events"
        return p.read_text().split() if p.exists() else []

    def check(self, want_file, want_text, restarts, label):
        for w in self.fleet.workers:
            got = (w["root"] / self.dir.name / "jobs/bench/current" / want_file).read_text()
            if got != want_text:
                raise SystemExit(f"{label}: {w['name']} has the wrong {want_file}")
            ev = self.events(w)
            if ev.count("start") != 1 or ev.count("restart") != restarts:
                raise SystemExit(f"{label}: {w['name']} starts/restarts {ev.count('start')}/"
                                 f"{ev.count('restart')}, expected 1/{restarts}")

    def reset(self):
        self.fleet.wipe(self.dir.name)
        shutil.rmtree(self.dir / ".cutover", ignore_errors=True)


def floor_publish(src, out):
    """tar --sort=name | zstd -19, then sha256sum: the work publish cannot avoid."""
    start = time.monotonic()
    with open(out, "wb") as f:
        tar = subprocess.Popen(["tar", "--sort=name", "--mtime=@0", "--owner=0", "--group=0",
                                "--numeric-owner", "-cf", "-", "-C", str(src), "."],
                               stdout=subprocess.PIPE)
        subprocess.run(["zstd", "-19", "-q", "-c"], stdin=tar.stdout, stdout=f, check=True)
        tar.wait()
    subprocess.run(["sha256sum", str(out)], check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - start


def verify_bench(root):
    """The cutover-index crate's bench: one line, `verify: <median> us`."""
    r = subprocess.run(["cargo", "bench", "-q", "-p", "cutover-index", "--bench", "verify"],
                       cwd=root, stdout=subprocess.PIPE, text=True, check=True)
    for line in r.stdout.splitlines():
        if line.startswith("verify:"):
            return float(line.split()[1])
    raise SystemExit(f"no verify figure in: {r.stdout}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cutover", required=True)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--fetch", action="store_true",
                    help="also push vs [store] worker_fetch from an S3 store (moto_server from target/moto-venv)")
    ap.add_argument("--parts", default="publish,channels",
                    help="what to measure: publish (against its floor), channels (canary + promote against deploy C)")
    a = ap.parse_args()
    a.cutover = str(Path(a.cutover).resolve())
    root = HERE.parent
    res = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cores": os.cpu_count(),
           "n": a.n, "runs": a.runs, "publish": [], "floor": [], "canary": [], "promote": [],
           "deploy_c": []}
    res["verify_us"] = verify_bench(root)
    print(f"index verify: {res['verify_us']:.0f} us", flush=True)
    work = Path(tempfile.mkdtemp(prefix="cutover-bench-channels-"))
    fleet = Fleet(a.n, work)
    try:
        src = work / "src-tree"
        make_tree(src)
        parts = a.parts.split(",")
        for r in range(a.runs if "publish" in parts else 0):
            # publish against its floor, on a fresh store each run
            store = work / f"store-{r}"
            pub = Project(fleet, src, work, a.cutover, f"pub{r}", store)
            (pub.job / "job.toml").write_text(job_toml("1.0.0", False))
            wall, _, _ = pub.run("publish", "bench", "--key", pub.key)
            res["publish"].append(wall)
            res["floor"].append(floor_publish(src, work / f"floor-{r}.tar.zst"))
            print(f"  run {r + 1}: publish {wall:.2f}s, floor {res['floor'][-1]:.2f}s", flush=True)
            shutil.rmtree(pub.dir)

        # deploy C (one small file changed, rolling batches of 5) and
        # canary + promote of the same change, published, in alternating
        # rounds: whatever slows the machine for a while slows both.
        plain = Project(fleet, src, work, a.cutover, "plain")
        (plain.job / "job.toml").write_text(job_toml("1", False))
        small = plain.job / "src/d0/sub0/file0.txt"
        original = small.read_text()
        store = work / "store-channels"
        ch = Project(fleet, src, work, a.cutover, "chan", store)
        ch_small = ch.job / "src/d0/sub0/file0.txt"
        for r in range(a.runs if "channels" in parts else 0):
            plain.reset()
            small.write_text(original)
            plain.run("deploy")
            small.write_text(original + f"changed in run {r}\n")
            wall, _, _ = plain.run("deploy")
            plain.check("src/d0/sub0/file0.txt", small.read_text(), 1, f"deploy C run {r + 1}")
            res["deploy_c"].append(wall)
            plain.reset()

            ch.reset()
            shutil.rmtree(store, ignore_errors=True)
            ch_small.write_text(original)
            (ch.job / "job.toml").write_text(job_toml("1.0.0", True))
            ch.run("publish", "bench", "--key", ch.key)
            ch.run("deploy")
            ch_small.write_text(original + f"changed in run {r}\n")
            (ch.job / "job.toml").write_text(job_toml("1.1.0", True))
            ch.run("publish", "bench", "--channel", "canary", "--key", ch.key)
            canary, _, _ = ch.run("channel", "canary", "bench", "--version", "1.1.0", "--key", ch.key)
            time.sleep(1.1)  # the soak
            promote, _, _ = ch.run("channel", "promote", "bench", "--version", "1.1.0", "--key", ch.key)
            ch.check("src/d0/sub0/file0.txt", ch_small.read_text(), 1, f"canary+promote run {r + 1}")
            res["canary"].append(canary)
            res["promote"].append(promote)
            print(f"  run {r + 1}: deploy C {res['deploy_c'][r]:.2f}s, canary {canary:.2f}s + "
                  f"promote {promote:.2f}s ({(canary + promote) / res['deploy_c'][r]:.2f})", flush=True)
        if a.fetch:
            # A first deploy of the published 30 MB job to N workers from an
            # S3 store: pushed by the operator, or fetched by each worker.
            moto = Moto(root)
            try:
                res["push"], res["fetch"] = [], []
                for mode in ("push", "fetch"):
                    pj = Project(fleet, src, work, a.cutover, mode, f"s3://bench/{mode}", fetch=(mode == "fetch"))
                    pj.env = moto.env
                    (pj.job / "job.toml").write_text(job_toml("1.0.0", False))
                    pj.run("publish", "bench", "--key", pj.key)
                    for r in range(a.runs):
                        pj.reset()
                        wall, _, _ = pj.run("deploy")
                        pj.check("src/d0/sub0/file0.txt", original, 0, f"{mode} run {r + 1}")
                        res[mode].append(wall)
                        print(f"  {mode} run {r + 1}: {wall:.2f}s", flush=True)
            finally:
                moto.stop()
    finally:
        fleet.stop()
        shutil.rmtree(work, ignore_errors=True)

    lines = [
        f"# Release channels, {res['date']} ({res['cores']} cores, N = {a.n}, medians of {a.runs} runs)",
        "",
        "| measure | cutover | reference | ratio |",
        "|---|---:|---:|---:|",
        f"| index verification | {res['verify_us']:.0f} us | target 5 ms | {res['verify_us'] / 5000:.3f} |",
    ]
    if res["publish"]:
        p, f = med(res["publish"]), med(res["floor"])
        lines.append(f"| publish, 30 MB / 300 files | {p:.2f} s | floor (tar \\| zstd -19, sha256sum) {f:.2f} s | {p / f:.2f} |")
    if res["canary"]:
        c, pr, d = med(res["canary"]), med(res["promote"]), med(res["deploy_c"])
        per_round = med([(x + y) / z for x, y, z in zip(res["canary"], res["promote"], res["deploy_c"])])
        lines.append(f"| canary + promote, one file, N = {a.n} | {c:.2f} + {pr:.2f} = {c + pr:.2f} s | deploy C {d:.2f} s | {(c + pr) / d:.2f} (per round: {per_round:.2f}) |")
    if a.fetch:
        pu, fe = med(res["push"]), med(res["fetch"])
        lines.append(f"| first deploy of the published job from S3, N = {a.n}: worker_fetch | {fe:.2f} s | "
                     f"pushed by the operator {pu:.2f} s | {fe / pu:.2f} |")
    lines.append("")
    text = "\n".join(lines)
    print(text)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = res["date"].replace(":", "")
    (out / f"channels-{stamp}.md").write_text(text)
    (out / f"channels-{stamp}.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
