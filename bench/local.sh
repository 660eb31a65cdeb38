#!/usr/bin/env bash
# Local workers: the native copy (hard links to the previous release, as
# rsync --link-dest does) against another build of cutover, side by side.
#
#   bash bench/local.sh NEW_BINARY BASE_BINARY [RUNS]
#
# A project with one job of 2,000 small files and one 20 MB file on three
# local workers. Timed per binary, in one run, RUNS times each, alternating:
#   A  the first deploy (every file copied)
#   B  a one-file change (one reload per worker; the rest hard-linked)
#   C  a deploy with nothing to do
# Prints the median wall time of each and the ratio NEW / BASE.
# A benchmark, never a test: nothing here asserts a time.
set -euo pipefail
new=$(realpath "$1")
base=$(realpath "$2")
runs=${3:-5}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

make_project() {
    local dir=$1
    mkdir -p "$dir/jobs/app"
    printf 'name = "bench"\n' > "$dir/cutover.toml"
    : > "$dir/workers.toml"
    for w in a b c; do
        printf '[[worker]]\nname = "%s"\ntransport = "local"\nroot = "workers/%s"\n\n' "$w" "$w" >> "$dir/workers.toml"
    done
    printf 'version = "1"\nrestart_policy = "reload"\n' > "$dir/jobs/app/job.toml"
    printf 'start:\n\t@true\nreload:\n\t@true\nrestart:\n\t@true\nstop:\n\t@true\n' > "$dir/jobs/app/Makefile"
    for d in $(seq 1 20); do
        mkdir -p "$dir/jobs/app/d$d"
        for f in $(seq 1 100); do
            printf 'file %s/%s\n%0200d\n' "$d" "$f" 0 > "$dir/jobs/app/d$d/f$f.txt"
        done
    done
    head -c 20000000 /dev/urandom > "$dir/jobs/app/blob.bin"
}

now() { date +%s.%N; }

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

declare -A times
for run in $(seq 1 "$runs"); do
    for tool in new base; do
        bin=${!tool}
        dir="$work/$tool-$run"
        make_project "$dir"
        sync  # the new files are written back before the clock starts
        t0=$(now); "$bin" --project "$dir" deploy >/dev/null; t1=$(now)
        echo "changed $run" >> "$dir/jobs/app/d1/f1.txt"
        t2=$(now); "$bin" --project "$dir" deploy >/dev/null; t3=$(now)
        t4=$(now); "$bin" --project "$dir" deploy >/dev/null; t5=$(now)
        times[$tool-A]+="$(echo "$t1 - $t0" | bc) "
        times[$tool-B]+="$(echo "$t3 - $t2" | bc) "
        times[$tool-C]+="$(echo "$t5 - $t4" | bc) "
        sync
        rm -rf "$dir"
    done
done

printf '| case | new (s) | base (s) | new / base |\n|---|---|---|---|\n'
for c in A B C; do
    n=$(tr ' ' '\n' <<< "${times[new-$c]}" | grep . | median)
    b=$(tr ' ' '\n' <<< "${times[base-$c]}" | grep . | median)
    printf '| %s | %.3f | %.3f | %.2f |\n' "$c" "$n" "$b" "$(echo "$n / $b" | bc -l)"
done
