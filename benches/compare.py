#!/usr/bin/env python3
"""Benchmarks of rha-core's synchronisation, with rsync run on the same image pair in the same go.

    python3 benches/compare.py [--size-mib 2048] [--work bench-work]

Makes an image of SIZE MiB (three quarters random data, one quarter zeros, like
a used disk), a changed copy (1% of the 4 KiB blocks at random plus one
16 MiB region), then measures from the page cache:

  1. rsync --inplace --no-whole-file            old -> new  (the peer)
  2. rha block-level sync (examples/sync_images) old -> new
  3. rha volume-level sync into an empty image
  4. rha fast resync from the master's change log vs a full block compare
     (examples/fast_resync)

and prints the figures side by side, with peak memory. Installs nothing: it
says what is missing and stops.
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time

BLOCK = 4096
MIB = 1 << 20


def need(tool, package):
    if shutil.which(tool) is None:
        sys.exit(f"missing: {tool}. Install it with `apt-get install {package}` and run again.")


def make_images(work, size_mib):
    old = os.path.join(work, "old.img")
    new = os.path.join(work, "new.img")
    rng = random.Random(2026)
    if not (os.path.exists(old) and os.path.getsize(old) == size_mib * MIB):
        with open(old, "wb") as f:
            for i in range(size_mib):
                # Every fourth MiB stays zero (a hole), like free space.
                if i % 4 == 3:
                    f.seek(MIB, 1)
                else:
                    f.write(rng.randbytes(MIB))
            f.truncate(size_mib * MIB)
    shutil.copyfile(old, new)
    blocks = size_mib * MIB // BLOCK
    changed = set()
    with open(new, "r+b") as f:
        for _ in range(blocks // 100):
            b = rng.randrange(blocks)
            f.seek(b * BLOCK)
            f.write(rng.randbytes(BLOCK))
            changed.add(b)
        region = (size_mib // 2 + 3) * MIB
        f.seek(region)
        f.write(rng.randbytes(16 * MIB))
        changed.update(range(region // BLOCK, (region + 16 * MIB) // BLOCK))
    return old, new, len(changed) * BLOCK


def warm(*paths):
    for p in paths:
        with open(p, "rb") as f:
            while f.read(16 * MIB):
                pass


def timed(cmd):
    t = time.monotonic()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return time.monotonic() - t, out


def same(a, b):
    return subprocess.run(["cmp", "-s", a, b]).returncode == 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--work", default="bench-work")
    args = ap.parse_args()
    need("rsync", "rsync")
    need("cmp", "diffutils")
    need("cargo", "cargo (or rustup)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    print("building the examples (release) ...", flush=True)
    subprocess.run(["cargo", "build", "--release", "--quiet", "--example", "sync_images", "--example", "fast_resync"],
                   check=True, cwd=root)
    ex = os.path.join(root, "target", "release", "examples")
    print(f"making a {args.size_mib} MiB image and a changed copy ...", flush=True)
    old, new, changed = make_images(work, args.size_mib)
    size = args.size_mib * MIB

    # 1. rsync, the peer.
    dst = os.path.join(work, "rsync-dst.img")
    shutil.copyfile(old, dst)
    warm(new, dst)
    rs_s, rs_out = timed(["rsync", "--inplace", "--no-whole-file", "--stats", new, dst])
    rs_sent = next((int(l.split(":")[1].split()[0].replace(",", "")) for l in rs_out.splitlines()
                    if l.startswith("Total bytes sent")), None)
    assert same(new, dst), "rsync left a different image"
    os.remove(dst)

    # 2. rha block-level.
    dst = os.path.join(work, "rha-dst.img")
    shutil.copyfile(old, dst)
    warm(new, dst)
    _, out = timed([os.path.join(ex, "sync_images"), "--method", "block", new, dst])
    blk = json.loads(out)
    assert same(new, dst), "rha block-level sync left a different image"
    os.remove(dst)

    # 3. rha volume-level into an empty image.
    dst = os.path.join(work, "rha-vol.img")
    if os.path.exists(dst):
        os.remove(dst)
    warm(new)
    _, out = timed([os.path.join(ex, "sync_images"), "--method", "volume", new, dst])
    vol = json.loads(out)
    assert same(new, dst), "rha volume-level sync left a different image"
    os.remove(dst)

    # 4. fast resync from the change log: three runs, the median (the fast
    # path is short enough for page-cache and writeback noise to show).
    runs = []
    for _ in range(3):
        warm(old)
        _, out = timed([os.path.join(ex, "fast_resync"), old, work])
        runs.append(json.loads(out))
    runs.sort(key=lambda r: r["ratio"])
    fr = runs[1]

    def mb(n):
        return f"{n / 1e6:,.1f} MB"

    print()
    print(f"image: {args.size_mib} MiB; changed: {mb(changed)} ({changed // BLOCK} blocks of 4 KiB)")
    print()
    print(f"{'block-level resync':34} {'wall':>9} {'sent':>12} {'sent/changed':>13}")
    print(f"{'rsync --inplace --no-whole-file':34} {rs_s:8.2f}s {mb(rs_sent or 0):>12} {(rs_sent or 0) / changed:12.2f}x")
    sent_total = blk['bytes_sent'] + blk['bytes_received']
    print(f"{'rha sync_images --method block':34} {blk['seconds']:8.2f}s {mb(blk['bytes_sent']):>12} "
          f"{blk['bytes_sent'] / changed:12.2f}x   (both directions: {sent_total / changed:.2f}x)")
    print(f"speed-up over rsync: {rs_s / blk['seconds']:.1f}x (target >= 5x); "
          f"bytes sent within {blk['bytes_sent'] / changed:.2f}x of changed (target <= 1.2x)")
    print()
    ratios = ", ".join(f"{r['ratio']:.3f}" for r in runs)
    print(f"fast resync from the change log: {fr['fast_seconds']:.3f}s, scanned {mb(fr['fast_bytes_scanned'])}; "
          f"full block compare of the same state: {fr['full_seconds']:.2f}s, scanned {mb(fr['full_bytes_scanned'])}; "
          f"ratio {fr['ratio']:.3f} (median of 3: {ratios}; target < 0.1)")
    print(f"volume-level sync from page cache: {vol['seconds']:.2f}s = {size / vol['seconds'] / 1e9:.2f} GB/s "
          f"(target >= 1 GB/s), sent {mb(vol['bytes_sent'])}")
    print(f"peak RSS: block-level {blk['peak_rss_bytes'] / MIB:.1f} MiB, volume-level {vol['peak_rss_bytes'] / MIB:.1f} MiB "
          f"(target < 100 MiB; VmHWM from /proc/self/status)")
    os.remove(new)


if __name__ == "__main__":
    main()
