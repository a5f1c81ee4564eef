#!/usr/bin/env bash
# fio through an iomapfs mount beside fio through the kernel's XFS on a loop device of the
# same size, in the same run (as root).
#
#   scripts/bench-fuse.sh        # prints a Markdown table: iomapfs, XFS and the ratio
#
# Workloads (fio, psync engine, buffered, one job): sequential 1 MiB writes ending with an
# fsync, sequential 1 MiB reads from a cold cache, 4 KiB random reads from a cold cache, and
# 4 KiB random writes ending with an fsync. Before each read the kernel's caches are dropped
# and iomapfs is remounted, so both sides start cold; the two sides alternate round by round.
# Each figure is the median over the rounds.
#
# Knobs: BENCH_DIR (target/bench-fuse; must be on a real file system), BENCH_IMAGE_GB (8),
# BENCH_FILE_MB (1024, the file fio works on), BENCH_SECS (10 per random job), BENCH_ROUNDS (3),
# BENCH_DEVICE (file or uring, the iomapfs device), BENCH_MOUNT_ARGS (--direct: the image is
# opened with O_DIRECT, so the host's page cache keeps no second copy of it).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "run as root: the XFS side needs a loop device and mount" >&2
    exit 1
fi
need() { command -v "$1" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }; }
need fio fio
need mkfs.xfs xfsprogs
need fusermount3 fuse3

DIR=$(realpath -m "${BENCH_DIR:-target/bench-fuse}")
IMAGE_GB=${BENCH_IMAGE_GB:-8}
FILE_MB=${BENCH_FILE_MB:-1024}
SECS=${BENCH_SECS:-10}
ROUNDS=${BENCH_ROUNDS:-3}
DEVICE=${BENCH_DEVICE:-file}
MOUNT_ARGS=${BENCH_MOUNT_ARGS---direct}
mkdir -p "$DIR/iomapfs" "$DIR/xfs"
cargo build -q --release -p iomapfs
BIN=target/release/iomapfs

DAEMON=""
LOOP=""
cleanup() {
    if mountpoint -q "$DIR/iomapfs"; then umount "$DIR/iomapfs" || umount -l "$DIR/iomapfs"; fi
    [ -n "$DAEMON" ] && wait "$DAEMON" 2>/dev/null || true
    if mountpoint -q "$DIR/xfs"; then umount "$DIR/xfs"; fi
    [ -n "$LOOP" ] && losetup -d "$LOOP" 2>/dev/null || true
    rm -f "$DIR/iomapfs.img" "$DIR/xfs.img"
}
trap cleanup EXIT

mount_iomapfs() {
    # shellcheck disable=SC2086
    "$BIN" mount --device "$DEVICE" $MOUNT_ARGS "$DIR/iomapfs.img" "$DIR/iomapfs" 2>"$DIR/iomapfs.log" &
    DAEMON=$!
    for _ in $(seq 200); do
        mountpoint -q "$DIR/iomapfs" && return 0
        sleep 0.05
    done
    echo "iomapfs did not mount; its log:" >&2
    cat "$DIR/iomapfs.log" >&2
    exit 1
}
unmount_iomapfs() {
    umount "$DIR/iomapfs"
    # The daemon writes back and checkpoints after the mount goes; the next mount waits for it.
    while kill -0 "$DAEMON" 2>/dev/null; do sleep 0.05; done
    wait "$DAEMON" || { echo "iomapfs failed; its log:" >&2; cat "$DIR/iomapfs.log" >&2; exit 1; }
    DAEMON=""
}

rm -f "$DIR/iomapfs.img" "$DIR/xfs.img"
truncate -s "${IMAGE_GB}G" "$DIR/iomapfs.img" "$DIR/xfs.img"
"$BIN" mkfs "$DIR/iomapfs.img" >/dev/null
mount_iomapfs
LOOP=$(losetup -f --show "$DIR/xfs.img")
mkfs.xfs -q -f "$LOOP"
mount "$LOOP" "$DIR/xfs"

cold() { # side
    sync
    echo 3 >/proc/sys/vm/drop_caches
    if [ "$1" = iomapfs ]; then
        unmount_iomapfs
        mount_iomapfs
    fi
}

fio_run() { # side job-args... -> "iops bytes_per_sec"
    local side=$1
    shift
    fio --name=bench --directory="$DIR/$side" --filename=bench --size="${FILE_MB}M" \
        --ioengine=psync --direct=0 --group_reporting --output-format=json "$@" |
        python3 -c 'import json,sys
j=json.load(sys.stdin)["jobs"][0]
d=j["read"] if j["read"]["io_bytes"] else j["write"]
print(round(d["iops"]), round(d["bw_bytes"]))'
}

job() { # name side: runs in this shell (it remounts), the figures go to $DIR/result
    case $1 in
    seq-read | rand-read) cold "$2" ;;
    esac
    case $1 in
    seq-write) fio_run "$2" --rw=write --bs=1M --end_fsync=1 ;;
    seq-read) fio_run "$2" --rw=read --bs=1M ;;
    rand-read) fio_run "$2" --rw=randread --bs=4k --runtime="$SECS" --time_based --norandommap --randrepeat=0 ;;
    rand-write) fio_run "$2" --rw=randwrite --bs=4k --runtime="$SECS" --time_based --norandommap --randrepeat=0 --end_fsync=1 ;;
    esac >"$DIR/result"
}

JOBS="seq-write seq-read rand-read rand-write"
declare -A got
for r in $(seq "$ROUNDS"); do
    if [ $((r % 2)) -eq 1 ]; then order="iomapfs xfs"; else order="xfs iomapfs"; fi
    for j in $JOBS; do
        for side in $order; do
            job "$j" "$side"
            got[$j,$side]+="$(cat "$DIR/result") "
        done
    done
    echo "round $r done" >&2
done

median() { # values... (pairs "iops bytes"); field
    python3 -c 'import sys,statistics
v=sys.argv[2].split(); f=int(sys.argv[1])
print(statistics.median(float(x) for x in v[f::2]))' "$@"
}

echo "iomapfs: --device $DEVICE $MOUNT_ARGS; $ROUNDS rounds, medians; fio psync, one job, ${FILE_MB} MiB file"
echo
echo "| workload | iomapfs | XFS on loop | ratio | ratio per round |"
echo "| --- | ---: | ---: | ---: | --- |"
for j in $JOBS; do
    case $j in seq-*) f=1 unit="MiB/s" div=1048576 ;; *) f=0 unit="IOPS" div=1 ;; esac
    a=$(median "$f" "${got[$j,iomapfs]}")
    b=$(median "$f" "${got[$j,xfs]}")
    per=$(python3 -c 'import sys
f=int(sys.argv[1]); a=sys.argv[2].split()[f::2]; b=sys.argv[3].split()[f::2]
print(" ".join(f"{float(x)/float(y):.2f}" for x, y in zip(a, b)))' "$f" "${got[$j,iomapfs]}" "${got[$j,xfs]}")
    python3 -c "a,b,d=$a,$b,$div
print(f'| $j | {a/d:,.0f} $unit | {b/d:,.0f} $unit | {a/b:.2f}x | $per |')"
done
