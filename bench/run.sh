#!/usr/bin/env bash
# One command for the benchmark: installs what it needs (sshd, rsync, a venv
# with Ansible and pyinfra from PyPI), builds cutover in release mode, and
# runs bench.py. Arguments are passed to bench.py, e.g.:
#   bash bench/run.sh --n 10,40 --runs 3
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v rsync >/dev/null 2>&1 || need+=(rsync)
command -v make >/dev/null 2>&1 || need+=(make)
[ -x /usr/bin/time ] || need+=(time)
if [ "${#need[@]}" -gt 0 ]; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
venv="${CUTOVER_BENCH_VENV:-$PWD/target/bench-venv}"
if [ ! -x "$venv/bin/ansible-playbook" ] || [ ! -x "$venv/bin/pyinfra" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q ansible pyinfra
fi
cargo build --release --locked -p cutover-cli
exec python3 bench/bench.py --cutover "$PWD/target/release/cutover" --venv "$venv" "$@"
