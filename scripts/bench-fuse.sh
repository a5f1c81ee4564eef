#!/usr/bin/env bash
# fio through an iomapfs mount beside fio through the kernel's XFS on a loop device of the
# same size, in the same run (as root): the `fuse` case of `iomapfs bench`, after installing
# what it needs (fio, xfsprogs, fuse3).
#
#   sudo scripts/bench-fuse.sh                 # prints a Markdown table
#   sudo scripts/bench-fuse.sh --rounds 3 --json
#
# Arguments go to `iomapfs bench`; the scratch images go under target/ and are removed after.
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
mkdir -p target
exec cargo run -q --release -p iomapfs -- bench --only fuse --dir target --svg target/bench-fuse.svg "$@"
