#!/usr/bin/env bash
# Device throughput beside fio, on the same file, in the same run.
#
#   scripts/bench-devices.sh            # prints a Markdown table of the four ratios
#
# UringDevice against fio's io_uring engine, FileDevice against fio's psync engine: 4 KiB
# random reads and 1 MiB sequential writes; and, for reference, the plainest single-thread
# io-uring loop against fio's 4 KiB random reads, all O_DIRECT, the two sides alternating round by
# round (and which goes first alternating too) so that a change in the machine's load hits both.
# Each figure is the median of the rounds; the ratio is ours over fio's, of the medians, then
# each round's (its two sides ran back to back) and their median.
#
# Knobs: BENCH_FILE (default target/bench-data/devices.img; must be on a file system with
# O_DIRECT, not tmpfs), BENCH_FILE_GB (4), BENCH_SECS (3 per round and side), BENCH_ROUNDS (5),
# BENCH_KEEP=1 keeps the file, BENCH_ONLY="uring-randread file-seqwrite ..." runs only the
# named cases (uring-randread, uring-poll-randread, raw-randread, raw-each-randread,
# uring-seqwrite, file-randread, file-seqwrite).
set -euo pipefail
cd "$(dirname "$0")/.."

FILE=${BENCH_FILE:-target/bench-data/devices.img}
SIZE_GB=${BENCH_FILE_GB:-4}
SECS=${BENCH_SECS:-3}
ROUNDS=${BENCH_ROUNDS:-5}

if ! command -v fio >/dev/null; then
    echo "installing fio" >&2
    apt-get update -qq && apt-get install -y -qq fio >/dev/null
fi
mkdir -p "$(dirname "$FILE")"
want=$((SIZE_GB << 30))
if [ ! -f "$FILE" ] || [ "$(stat -c %s "$FILE")" -ne "$want" ]; then
    # Every block written, so reads reach the disk rather than an unwritten extent.
    echo "writing $FILE ($SIZE_GB GiB)" >&2
    fio --name=fill --filename="$FILE" --size="$want" --rw=write --bs=1M --direct=1 \
        --ioengine=psync --output-format=terse >/dev/null
fi
cargo bench -q -p iomap-dev --bench devices --no-run 2>/dev/null

ours() { # device workload extra-args...
    cargo bench -q -p iomap-dev --bench devices -- "$1" "$2" "$FILE" --secs "$SECS" "${@:3}" \
        2>/dev/null | sed -n 's/.*iops=\([0-9]*\) bytes_per_sec=\([0-9]*\).*/\1 \2/p'
}

theirs() { # fio-args...
    fio --name=bench --filename="$FILE" --size="$want" --direct=1 --runtime="$SECS" \
        --time_based --norandommap --randrepeat=0 --group_reporting --output-format=json "$@" |
        python3 -c 'import json,sys
j=json.load(sys.stdin)["jobs"][0]
d=j["read"] if j["read"]["io_bytes"] else j["write"]
print(round(d["iops"]), round(d["bw_bytes"]))'
}

declare -A results
run_case() { # name metric(1=iops,2=bytes) ours-args -- fio-args
    local name=$1 metric=$2
    shift 2
    local ours_args=() fio_args=()
    while [ "$1" != "--" ]; do ours_args+=("$1"); shift; done
    shift
    fio_args=("$@")
    case " ${BENCH_ONLY:-$name} " in *" $name "*) ;; *) return ;; esac
    for r in $(seq "$ROUNDS"); do
        # Odd rounds run ours first, even rounds fio first: whatever one run leaves behind
        # (the host's dirty pages, a warm cache) falls on each side equally often.
        if [ $((r % 2)) = 1 ]; then
            results[$name.ours]+=" $(ours "${ours_args[@]}" | cut -d' ' -f"$metric")"
            results[$name.fio]+=" $(theirs "${fio_args[@]}" | cut -d' ' -f"$metric")"
        else
            results[$name.fio]+=" $(theirs "${fio_args[@]}" | cut -d' ' -f"$metric")"
            results[$name.ours]+=" $(ours "${ours_args[@]}" | cut -d' ' -f"$metric")"
        fi
        echo "$name round $r: ours${results[$name.ours]##* } fio${results[$name.fio]##* }" \
            "(load average $(cut -d' ' -f1 /proc/loadavg))" >&2
    done
}

run_case uring-randread 1 uring randread --depth 32 -- \
    --ioengine=io_uring --rw=randread --bs=4k --iodepth=32
run_case uring-poll-randread 1 uring randread --depth 32 --poll -- \
    --ioengine=io_uring --rw=randread --bs=4k --iodepth=32
run_case raw-randread 1 raw-uring randread --depth 32 -- \
    --ioengine=io_uring --rw=randread --bs=4k --iodepth=32
run_case raw-each-randread 1 raw-uring randread --depth 32 --each -- \
    --ioengine=io_uring --rw=randread --bs=4k --iodepth=32
run_case uring-seqwrite 2 uring seqwrite --depth 8 -- \
    --ioengine=io_uring --rw=write --bs=1M --iodepth=8
run_case file-randread 1 file randread --workers 4 --depth 4 -- \
    --ioengine=psync --rw=randread --bs=4k --numjobs=4
run_case file-seqwrite 2 file seqwrite --workers 1 --depth 1 -- \
    --ioengine=psync --rw=write --bs=1M --numjobs=1

python3 - "$ROUNDS" "$SECS" \
    "${results[uring-randread.ours]:-}" "${results[uring-randread.fio]:-}" \
    "${results[uring-seqwrite.ours]:-}" "${results[uring-seqwrite.fio]:-}" \
    "${results[file-randread.ours]:-}" "${results[file-randread.fio]:-}" \
    "${results[file-seqwrite.ours]:-}" "${results[file-seqwrite.fio]:-}" \
    "${results[raw-randread.ours]:-}" "${results[raw-randread.fio]:-}" \
    "${results[uring-poll-randread.ours]:-}" "${results[uring-poll-randread.fio]:-}" \
    "${results[raw-each-randread.ours]:-}" "${results[raw-each-randread.fio]:-}" <<'EOF'
import statistics, sys
rounds, secs = sys.argv[1], sys.argv[2]
v = [list(map(float, a.split())) for a in sys.argv[3:]]
rows = [
    ("UringDevice vs fio io_uring", "4 KiB random read, QD 32", "IOPS", 0.9),
    ("UringDevice vs fio io_uring", "1 MiB sequential write, QD 8", "MiB/s", 0.95),
    ("FileDevice vs fio psync", "4 KiB random read, 4 threads", "IOPS", 0.9),
    ("FileDevice vs fio psync", "1 MiB sequential write, 1 thread", "MiB/s", 0.95),
    ("plain io-uring loop vs fio io_uring", "4 KiB random read, QD 32", "IOPS", None),
    ("UringDevice, polling, vs fio io_uring", "4 KiB random read, QD 32", "IOPS", 0.9),
    ("plain io-uring loop, fio's pattern, vs fio io_uring", "4 KiB random read, QD 32", "IOPS",
     None),
]
print(f"O_DIRECT, {rounds} alternating rounds of {secs} s per side; medians.\n")
print("| Device vs baseline | Workload | Ours | fio | Ratio (target) | Per round | Median of rounds |")
print("|---|---|---:|---:|---:|---|---:|")
for i, (who, what, unit, target) in enumerate(rows):
    if not v[2 * i]:
        continue  # left out with BENCH_ONLY
    ours, fio = statistics.median(v[2 * i]), statistics.median(v[2 * i + 1])
    scale = 1 if unit == "IOPS" else 1 / (1 << 20)
    per_round = [a / b for a, b in zip(v[2 * i], v[2 * i + 1])]
    print(f"| {who} | {what} | {ours * scale:,.0f} {unit} | {fio * scale:,.0f} {unit} "
          f"| {ours / fio:.2f}×" + (f" (≥ {target}×)" if target else " (no target)")
          + f" | {' '.join(f'{r:.2f}' for r in per_round)} | {statistics.median(per_round):.2f}× |")
EOF

[ "${BENCH_KEEP:-0}" = 1 ] || rm -f "$FILE"
