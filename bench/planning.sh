#!/usr/bin/env bash
# Planning and hashing: `cutover deploy --dry-run` on a 10,000-file job
# (warm, median of 5), and hashing throughput against b3sum and sha256sum
# of the same 30 MB tree. Usage: bash bench/planning.sh [path/to/cutover]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cutover="${1:-$(cd "$(dirname "$0")/.." && pwd)/target/release/cutover}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
timeit() { local s e; s=$(date +%s%N); "$@" >/dev/null; e=$(date +%s%N); echo "scale=4; ($e-$s)/1000000000" | bc; }

project() { # DIR: a project with one local worker and job `big`
    mkdir -p "$1/jobs/big"
    printf 'name = "plan-bench"\n' > "$1/cutover.toml"
    printf '[[worker]]\nname = "local"\ntransport = "local"\nroot = "w"\n' > "$1/workers.toml"
    printf 'version = "1"\n' > "$1/jobs/big/job.toml"
}

# 10,000 small files in 100 directories.
project "$work/many"
python3 - "$work/many/jobs/big" <<'PY'
import sys, os, random
rng = random.Random(7)
for d in range(100):
    os.makedirs(f"{sys.argv[1]}/d{d}", exist_ok=True)
    for f in range(100):
        open(f"{sys.argv[1]}/d{d}/f{f}.txt", "w").write("x" * rng.randint(100, 3000))
PY
cd "$work/many"
"$cutover" deploy --dry-run >/dev/null
many=$(for _ in 1 2 3 4 5; do timeit "$cutover" deploy --dry-run; done | median)

# The benchmark's 30 MB tree: hashing throughput.
project "$work/big"
python3 -c "
import sys; sys.path.insert(0, '$here')
import bench, shutil, pathlib
t = pathlib.Path('$work/tree'); bench.make_tree(t)
for p in t.iterdir(): shutil.move(str(p), '$work/big/jobs/big/')
"
cd "$work/big"
bytes=$(du -sb jobs/big | cut -f1)
"$cutover" deploy --dry-run >/dev/null
plan30=$(for _ in 1 2 3 4 5; do timeit "$cutover" deploy --dry-run; done | median)
b3=$(for _ in 1 2 3 4 5; do timeit sh -c 'find jobs/big -type f -print0 | xargs -0 b3sum --num-threads 1'; done | median)
sha=$(for _ in 1 2 3 4 5; do timeit sh -c 'find jobs/big -type f -print0 | xargs -0 sha256sum'; done | median)
mb=$(echo "scale=2; $bytes/1048576" | bc)
echo "| measure | seconds (median of 5, warm) | throughput |"
echo "|---|---:|---:|"
echo "| cutover deploy --dry-run, 10,000 files | $many | |"
echo "| cutover deploy --dry-run, 300 files / ${mb} MB (scan, hash, render, plan) | $plan30 | $(echo "scale=0; $mb/$plan30" | bc) MB/s |"
echo "| b3sum (1 thread), same files | $b3 | $(echo "scale=0; $mb/$b3" | bc) MB/s |"
echo "| sha256sum, same files | $sha | $(echo "scale=0; $mb/$sha" | bc) MB/s |"
