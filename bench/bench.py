#!/usr/bin/env python3
"""Side-by-side deploy benchmark: cutover vs Ansible vs pyinfra vs the floors
(`ssh true` and `rsync -a` to every host in parallel), on a fleet of real sshd
workers on 127.0.0.x. Every run is checked on every worker (tree identical,
started, healthy, restart count) so that a fast wrong answer fails.

Run through bench/run.sh, which builds cutover and installs the peers.
"""

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BATCH = 5

MAKEFILE = """\
# STATE is where the service keeps its state: cutover passes CUTOVER_SHARED,
# the other tools pass STATE=... on the command line.
STATE ?= $(CUTOVER_SHARED)
start:
\t@sleep 0.2; mkdir -p $(STATE); echo running > $(STATE)/status; echo start >> $(STATE)/events
restart:
\t@sleep 0.2; mkdir -p $(STATE); echo running > $(STATE)/status; echo restart >> $(STATE)/events
stop:
\t@sleep 0.2; echo stopped > $(STATE)/status
health:
\t@grep -qx running $(STATE)/status
.PHONY: start restart stop health
"""


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def free_port(ip):
    s = socket.socket()
    s.bind((ip, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def make_tree(dest: Path, seed=42):
    """300 files, about 30 MB: five 5 MB seeded random binaries and 293 text
    files of about 17 KB in 30 nested directories; plus the Makefile."""
    rng = random.Random(seed)
    dest.mkdir(parents=True)
    (dest / "Makefile").write_text(MAKEFILE)
    bindir = dest / "bin"
    bindir.mkdir()
    for i in range(5):
        (bindir / f"blob{i}.bin").write_bytes(rng.randbytes(5 * 1024 * 1024))
    dirs = []
    for i in range(30):
        d = dest / "src" / f"d{i % 6}" / f"sub{i}"
        d.mkdir(parents=True, exist_ok=True)
        dirs.append(d)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    for i in range(293):
        text = " ".join(rng.choice(words) for _ in range(2900))[: 17 * 1024]
        (dirs[i % 30] / f"file{i}.txt").write_text(text + "\n")


def tree_digest(root: Path):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        # cutover ships a job's files, not its manifest.
        if p.is_file() and p.relative_to(root) != Path("job.toml"):
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


class Fleet:
    def __init__(self, n, base: Path):
        self.n = n
        self.base = base
        self.procs = []
        self.workers = []
        key = base / "client_key"
        sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
        self.key = key
        auth = base / "authorized_keys"
        shutil.copy(str(key) + ".pub", auth)
        os.makedirs("/run/sshd", exist_ok=True)
        known = []
        ssh_config = []
        for i in range(n):
            ip = f"127.0.0.{i + 2}"
            port = free_port(ip)
            wdir = base / f"w{i + 1}"
            root = wdir / "root"
            root.mkdir(parents=True)
            hk = wdir / "host_key"
            sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(hk)])
            kind, blob = (Path(str(hk) + ".pub").read_text().split()[:2])
            known.append(f"[{ip}]:{port} {kind} {blob}")
            cfg = wdir / "sshd_config"
            cfg.write_text(
                f"ListenAddress {ip}:{port}\nHostKey {hk}\nPidFile {wdir}/pid\n"
                f"AuthorizedKeysFile {auth}\nStrictModes no\nPasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\nUsePAM no\nPermitRootLogin prohibit-password\n"
                "MaxSessions 200\nMaxStartups 200\nLogLevel ERROR\nSubsystem sftp internal-sftp\n"
                # bash skips ~/.bashrc under sshd when SHLVL >= 2: a slow
                # rc file (pyenv init here) would distort every tool alike.
                "SetEnv SHLVL=1\n"
            )
            self.procs.append(subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(cfg)],
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            self.workers.append({"name": f"w{i + 1}", "ip": ip, "port": port, "root": root})
            ssh_config.append(f"Host w{i + 1}\n  HostName {ip}\n  Port {port}\n")
        self.known_hosts = base / "known_hosts"
        self.known_hosts.write_text("\n".join(known) + "\n")
        self.ssh_config = base / "ssh_config"
        common = (f"Host *\n  User root\n  IdentityFile {key}\n  IdentitiesOnly yes\n"
                  f"  UserKnownHostsFile {self.known_hosts}\n  StrictHostKeyChecking yes\n  BatchMode yes\n")
        self.ssh_config.write_text("\n".join(ssh_config) + "\n" + common)
        for w in self.workers:
            deadline = time.time() + 10
            while True:
                try:
                    socket.create_connection((w["ip"], w["port"]), timeout=0.2).close()
                    break
                except OSError:
                    if time.time() > deadline:
                        raise SystemExit(f"sshd for {w['name']} did not start")
                    time.sleep(0.02)

    def stop(self):
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            p.wait()

    def wipe(self, sub):
        for w in self.workers:
            shutil.rmtree(w["root"] / sub, ignore_errors=True)


def timed(cmd, cwd=None, env=None):
    """Runs cmd under /usr/bin/time; returns (wall, cpu seconds, max rss MB)."""
    t = tempfile.NamedTemporaryFile(delete=False)
    start = time.monotonic()
    r = subprocess.run(["/usr/bin/time", "-f", "%U %S %M", "-o", t.name] + cmd, cwd=cwd, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.monotonic() - start
    u, s_, m = open(t.name).read().split()[-3:]
    os.unlink(t.name)
    if r.returncode != 0:
        print(r.stdout[-4000:], file=sys.stderr)
        raise SystemExit(f"command failed ({r.returncode}): {' '.join(cmd)}")
    return wall, float(u) + float(s_), int(m) / 1024


# ---------------------------------------------------------------- tools

class Cutover:
    name = "cutover"

    def __init__(self, fleet, src, work, binary, name="cutover"):
        self.fleet, self.bin, self.name = fleet, binary, name
        self.proj = work / f"{name}-project"
        job = self.proj / "jobs" / "bench"
        job.parent.mkdir(parents=True)
        shutil.copytree(src, job, symlinks=True)
        (job / "job.toml").write_text(
            'version = "1"\nrestart_policy = "always"\n'
            f"max_concurrent_starts = {BATCH}\nmax_concurrent_upgrades = {BATCH}\n"
            '[health]\ncommand = "make -s health"\nattempts = 20\ninterval = "50ms"\n')
        (self.proj / "cutover.toml").write_text(
            f'name = "bench"\n[ssh]\nuser = "root"\nidentity_file = "{fleet.key}"\n'
            f'known_hosts_file = "{fleet.known_hosts}"\nmax_parallel = 256\n')
        (self.proj / "workers.toml").write_text("".join(
            f'[[worker]]\nname = "{w["name"]}"\nhost = "{w["ip"]}"\nport = {w["port"]}\n'
            f'root = "{w["root"]}/cutover"\n\n' for w in fleet.workers))

    def reset(self):
        self.fleet.wipe("cutover")
        shutil.rmtree(self.proj / ".cutover", ignore_errors=True)

    def tree(self):
        return self.proj / "jobs" / "bench"

    def deploy(self):
        return timed([self.bin, "deploy", "--progress=never"], cwd=self.proj)

    def deploy_verify(self):
        """The no-op with every worker checked (one connection and one
        quick-check listing per host) instead of trusting the state store."""
        return timed([self.bin, "deploy", "--verify", "--progress=never"], cwd=self.proj)

    def app_dir(self, w):
        return w["root"] / "cutover/jobs/bench/current"

    def state_dir(self, w):
        return w["root"] / "cutover/jobs/bench/shared"


class Peer:
    """A peer tool: its own copy of the tree under work/NAME/app, deployed to
    ROOT/NAME/app on each worker, with the service's state in ROOT/NAME/state."""
    name = ""

    def __init__(self, fleet, src, work, venv):
        self.fleet, self.venv = fleet, venv
        self.dir = work / self.name
        self.dir.mkdir()
        self.src = self.dir / "app"
        shutil.copytree(src, self.src, symlinks=True)

    def tree(self):
        return self.src

    def app_dir(self, w):
        return w["root"] / self.name / "app"

    def state_dir(self, w):
        return w["root"] / self.name / "state"


class Ansible(Peer):
    name = "ansible"

    def __init__(self, fleet, src, work, venv):
        super().__init__(fleet, src, work, venv)
        inv = ["[fleet]"] + [
            f'{w["name"]} ansible_host={w["ip"]} ansible_port={w["port"]} root_dir={w["root"]}/ansible'
            for w in fleet.workers]
        (self.dir / "inventory.ini").write_text("\n".join(inv) + "\n")
        cp = self.dir / "cp"
        (self.dir / "ansible.cfg").write_text(
            "[defaults]\ninventory = inventory.ini\nforks = 256\ngathering = explicit\n"
            "host_key_checking = True\nremote_user = root\ninterpreter_python = /usr/bin/python3\n"
            f"private_key_file = {fleet.key}\nstdout_callback = default\nretry_files_enabled = False\n"
            "[ssh_connection]\npipelining = True\n"
            f"ssh_args = -o ControlMaster=auto -o ControlPersist=60s -o UserKnownHostsFile={fleet.known_hosts}\n"
            f"control_path_dir = {cp}\n")
        (self.dir / "deploy.yml").write_text(f"""\
- hosts: fleet
  gather_facts: false
  serial: {BATCH}
  vars:
    app: "{{{{ root_dir }}}}/app"
    state: "{{{{ root_dir }}}}/state"
  tasks:
    - name: started before?
      ansible.builtin.stat:
        path: "{{{{ state }}}}/status"
      register: st
    - name: sync the tree
      ansible.posix.synchronize:
        src: "{self.src}/"
        dest: "{{{{ app }}}}/"
        delete: true
        use_ssh_args: true
      register: sync
    - name: first start
      ansible.builtin.command: make -C {{{{ app }}}} start STATE={{{{ state }}}}
      when: not st.stat.exists
    - name: restart on change
      ansible.builtin.command: make -C {{{{ app }}}} restart STATE={{{{ state }}}}
      when: st.stat.exists and sync.changed
    - name: health
      ansible.builtin.command: make -s -C {{{{ app }}}} health STATE={{{{ state }}}}
      changed_when: false
""")

    def reset(self):
        self.fleet.wipe("ansible")
        shutil.rmtree(self.dir / "cp", ignore_errors=True)
        for w in self.fleet.workers:
            (w["root"] / "ansible").mkdir(parents=True, exist_ok=True)

    def deploy(self):
        env = dict(os.environ, ANSIBLE_CONFIG=str(self.dir / "ansible.cfg"))
        # Every run opens its own connections, as a fresh `ansible-playbook` does.
        shutil.rmtree(self.dir / "cp", ignore_errors=True)
        return timed([str(self.venv / "bin/ansible-playbook"), "deploy.yml"], cwd=self.dir, env=env)



class Pyinfra(Peer):
    name = "pyinfra"

    def __init__(self, fleet, src, work, venv):
        super().__init__(fleet, src, work, venv)
        hosts = [
            (w["ip"], {"ssh_port": w["port"], "ssh_user": "root", "ssh_key": str(fleet.key),
                       "ssh_known_hosts_file": str(fleet.known_hosts), "ssh_strict_host_key_checking": "yes",
                       "root_dir": f'{w["root"]}/pyinfra'})
            for w in fleet.workers]
        batches = [hosts[i:i + BATCH] for i in range(0, len(hosts), BATCH)]
        for b, group in enumerate(batches):
            (self.dir / f"inventory_{b}.py").write_text(f"fleet = {group!r}\n")
        self.batches = len(batches)
        (self.dir / "deploy.py").write_text(f"""\
from pyinfra import host
from pyinfra.facts.files import File
from pyinfra.operations import files, server

root = host.data.root_dir
app, state = root + "/app", root + "/state"
started = host.get_fact(File, path=state + "/status")
sync = files.sync(name="sync the tree", src="{self.src}", dest=app, delete=True)
if not started:
    server.shell(name="first start", commands=[f"make -C {{app}} start STATE={{state}}"])
else:
    server.shell(name="restart on change", commands=[f"make -C {{app}} restart STATE={{state}}"],
                 _if=sync.did_change)
server.shell(name="health", commands=[f"make -s -C {{app}} health STATE={{state}}"])
""")

    def reset(self):
        self.fleet.wipe("pyinfra")

    def deploy(self):
        # Rolling batches of 5: one pyinfra run per batch, in order.
        wall = cpu = rss = 0.0
        for b in range(self.batches):
            w, c, m = timed([str(self.venv / "bin/pyinfra"), "-y", "--parallel", str(BATCH),
                             f"inventory_{b}.py", "deploy.py"], cwd=self.dir)
            wall, cpu, rss = wall + w, cpu + c, max(rss, m)
        return wall, cpu, rss



def verify(tool, fleet, expect_starts, expect_restarts, label):
    want = tree_digest(tool.tree())
    for w in fleet.workers:
        got = tree_digest(tool.app_dir(w))
        if got != want:
            raise SystemExit(f"{tool.name} {label}: tree on {w['name']} differs from the source")
        state = tool.state_dir(w)
        status = (state / "status").read_text().strip() if (state / "status").exists() else ""
        if status != "running":
            raise SystemExit(f"{tool.name} {label}: {w['name']} is not running (status {status!r})")
        events = (state / "events").read_text().split() if (state / "events").exists() else []
        if events.count("start") != expect_starts or events.count("restart") != expect_restarts:
            raise SystemExit(f"{tool.name} {label}: {w['name']} has starts/restarts "
                             f"{events.count('start')}/{events.count('restart')}, "
                             f"expected {expect_starts}/{expect_restarts}")


def run_scenarios(tool, fleet, runs):
    res = {"A": [], "B": [], "C": []}  # and "Bv" (B with --verify) for cutover
    small = tool.tree() / "src/d0/sub0/file0.txt"
    original = small.read_text()
    for r in range(runs):
        tool.reset()
        small.write_text(original)
        res["A"].append(tool.deploy()); verify(tool, fleet, 1, 0, f"A run {r + 1}")
        res["B"].append(tool.deploy()); verify(tool, fleet, 1, 0, f"B run {r + 1}")
        if hasattr(tool, "deploy_verify"):
            res.setdefault("Bv", []).append(tool.deploy_verify())
            verify(tool, fleet, 1, 0, f"B --verify run {r + 1}")
        small.write_text(original + f"changed in run {r}\n")
        res["C"].append(tool.deploy()); verify(tool, fleet, 1, 1, f"C run {r + 1}")
        print(f"  {tool.name} run {r + 1}: " + ", ".join(f"{k} {v[-1][0]:.2f}s" for k, v in res.items() if v), flush=True)
    return res


def floors(fleet, src, runs):
    out = {"ssh": [], "rsync_first": [], "rsync_noop": []}
    def parallel(cmds):
        start = time.monotonic()
        procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in cmds]
        for p in procs:
            if p.wait() != 0:
                raise SystemExit(f"floor command failed: {p.stderr.read().decode()[-500:]}")
        return time.monotonic() - start
    ssh = ["ssh", "-F", str(fleet.ssh_config)]
    for _ in range(runs):
        out["ssh"].append(parallel([ssh + [w["name"], "true"] for w in fleet.workers]))
        fleet.wipe("floor")
        rs = lambda w: ["rsync", "-a", "-e", f"ssh -F {fleet.ssh_config}", f"{src}/", f"{w['name']}:{w['root']}/floor/"]
        out["rsync_first"].append(parallel([rs(w) for w in fleet.workers]))
        out["rsync_noop"].append(parallel([rs(w) for w in fleet.workers]))
    return out


def med(xs):
    return statistics.median(xs) if xs else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", default="10,40,100", help="fleet sizes, comma-separated")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tools", default="cutover,ansible,pyinfra")
    ap.add_argument("--peer-max-n", type=int, default=1000, help="skip the peers above this fleet size")
    ap.add_argument("--cutover", required=True, help="path to the cutover binary")
    ap.add_argument("--cutover-base", help="another cutover binary (say, main before a change), "
                    "measured in the same run as the tool `cutover-base`")
    ap.add_argument("--venv", required=True, help="virtualenv with ansible and pyinfra")
    ap.add_argument("--out", default=str(HERE / "results"))
    a = ap.parse_args()
    results = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cores": os.cpu_count(),
               "runs": a.runs, "sizes": {}}
    tools = a.tools.split(",")
    if a.cutover_base:
        tools.insert(tools.index("cutover") + 1 if "cutover" in tools else 0, "cutover-base")
    for n in [int(x) for x in a.n.split(",")]:
        print(f"== N = {n}", flush=True)
        work = Path(tempfile.mkdtemp(prefix=f"cutover-bench-{n}-"))
        fleet = Fleet(n, work)
        try:
            src = work / "src-tree"
            make_tree(src)
            row = {"floors": floors(fleet, src, a.runs)}
            print(f"  floors: ssh {med(row['floors']['ssh']):.2f}s, rsync {med(row['floors']['rsync_first']):.2f}s", flush=True)
            for t in tools:
                if t != "cutover" and n > a.peer_max_n:
                    continue
                tool = {"cutover": lambda: Cutover(fleet, src, work, a.cutover),
                        "cutover-base": lambda: Cutover(fleet, src, work, a.cutover_base, "cutover-base"),
                        "ansible": lambda: Ansible(fleet, src, work, Path(a.venv)),
                        "pyinfra": lambda: Pyinfra(fleet, src, work, Path(a.venv))}[t]()
                row[t] = run_scenarios(tool, fleet, a.runs)
            results["sizes"][n] = row
        finally:
            fleet.stop()
            shutil.rmtree(work, ignore_errors=True)
        # Written after every N, so that a long run cut short keeps what it measured.
        report(results, Path(a.out), final=False)
    report(results, Path(a.out))


def report(results, out: Path, final=True):
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# cutover benchmark, {results['date']}, {results['cores']} cores, "
             f"median of {results['runs']} run(s), seconds", ""]
    lines.append("| N | tool | A first | B no-op | B --verify | C one file | A vs rsync floor | B --verify vs ssh floor | C vs (ssh floor + batches x 0.2s) | cutover/peer A, B, C | CPU s (A) | max RSS MB |")
    lines.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for n, row in results["sizes"].items():
        fl = row["floors"]
        ssh_f, rs_f = med(fl["ssh"]), med(fl["rsync_first"])
        c_floor = ssh_f + (int(n) + BATCH - 1) // BATCH * 0.2
        lines.append(f"| {n} | floor: ssh true | {ssh_f:.2f} | | | | | | | | | |")
        lines.append(f"| {n} | floor: rsync -a | {rs_f:.2f} | {med(fl['rsync_noop']):.2f} | | | | | | | | |")
        cut = row.get("cutover")
        for tool in ["cutover", "cutover-base", "ansible", "pyinfra"]:
            if tool not in row:
                continue
            r = row[tool]
            a, b, c = (med([x[0] for x in r[k]]) for k in "ABC")
            cpu = med([x[1] for x in r["A"]])
            rss = max(x[2] for k in r for x in r[k])
            ratio = ""
            if cut and tool != "cutover":
                ca, cb, cc = (med([x[0] for x in cut[k]]) for k in "ABC")
                ratio = f"{ca / a:.2f}, {cb / b:.3f}, {cc / c:.2f}"
            bv = med([x[0] for x in r.get("Bv", [])])
            bv_cells = f"{bv:.2f} | " if bv is not None else " | "
            bv_ratio = f"{bv / ssh_f:.2f}" if bv is not None else ""
            lines.append(f"| {n} | {tool} | {a:.2f} | {b:.2f} | {bv_cells}{c:.2f} | {a / rs_f:.2f} | {bv_ratio} | "
                         f"{c / c_floor:.2f} | {ratio} | {cpu:.2f} | {rss:.0f} |")
    text = "\n".join(lines) + "\n"
    if final:
        print(text)
    stamp = results["date"].replace(":", "")
    (out / f"results-{stamp}.md").write_text(text)
    (out / f"results-{stamp}.json").write_text(json.dumps(results, indent=1, default=str))
    if final:
        print(f"written to {out}/results-{stamp}.md")


if __name__ == "__main__":
    main()
