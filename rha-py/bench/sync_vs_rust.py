#!/usr/bin/env python3
"""rha.sync against the Rust example (examples/sync_images) on the same 1 GiB image pair.

    python3 -m venv /tmp/rha-bench && /tmp/rha-bench/bin/pip install ./rha-py   # optimised ([profile.wheel])
    /tmp/rha-bench/bin/python rha-py/bench/sync_vs_rust.py [--size-mib 1024] [--rounds 5] [--work bench-work]

Makes the pair benches/compare.py makes (three quarters random data, one
quarter holes; the copy has 1% of its 4 KiB blocks and one 16 MiB region
changed), builds `cargo build --release --example sync_images`, then in
interleaved rounds resynchronises a fresh copy of the old image from the new
one, once with the Rust example and once with `rha.sync` in this
interpreter, both from the page cache, and checks each result with `cmp`.
Prints both times per round and the medians; the figure is the ratio of the
medians of the synchronisation's own `seconds` (what both report), with the
wall time of each whole call beside it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import rha

ROOT = Path(__file__).resolve().parents[2]


def compare_module() -> Any:
    """benches/compare.py, for its image pair (one definition of the workload)."""
    spec = importlib.util.spec_from_file_location("rha_bench_compare", ROOT / "benches" / "compare.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rust_round(example: Path, new: str, dst: str) -> Tuple[float, Dict[str, Any]]:
    t = time.monotonic()
    out = subprocess.run([str(example), "--method", "block", new, dst], check=True, capture_output=True, text=True)
    return time.monotonic() - t, json.loads(out.stdout)


def python_round(new: str, dst: str) -> Tuple[float, Dict[str, Any]]:
    t = time.monotonic()
    stats = rha.sync(new, dst, method="block")
    return time.monotonic() - t, stats.to_dict()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--work", default="bench-work")
    args = ap.parse_args()
    cmp = compare_module()
    cmp.need("cmp", "diffutils")
    cmp.need("cargo", "cargo (or rustup)")
    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    print("building examples/sync_images (release) ...", flush=True)
    subprocess.run(["cargo", "build", "--release", "--quiet", "--example", "sync_images"], check=True, cwd=ROOT)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    example = target / "release" / "examples" / "sync_images"
    print(f"making a {args.size_mib} MiB image and a changed copy in {work} ...", flush=True)
    old, new, changed = cmp.make_images(work, args.size_mib)
    print(f"{changed / 1e6:.1f} MB differ; rha {rha.__version__} from {Path(rha.__file__).parent}")

    results: Dict[str, List[Tuple[float, Dict[str, Any]]]] = {"rust": [], "python": []}
    for r in range(args.rounds):
        order = ["rust", "python"] if r % 2 == 0 else ["python", "rust"]
        for who in order:
            dst = os.path.join(work, f"{who}-dst.img")
            shutil.copyfile(old, dst)
            cmp.warm(new, dst)
            wall, report = rust_round(example, new, dst) if who == "rust" else python_round(new, dst)
            assert cmp.same(new, dst), f"{who}: the replica differs from the master"
            os.remove(dst)
            results[who].append((wall, report))
            print(
                f"round {r + 1} {who:6}: sync {report['seconds']:.3f} s, wall {wall:.3f} s, "
                f"{report['blocks_changed']} blocks, {report['bytes_sent'] / 1e6:.1f} MB sent",
                flush=True,
            )
    rust = statistics.median(rep["seconds"] for _, rep in results["rust"])
    py = statistics.median(rep["seconds"] for _, rep in results["python"])
    rust_wall = statistics.median(w for w, _ in results["rust"])
    py_wall = statistics.median(w for w, _ in results["python"])
    print()
    print(f"{'':28} {'sync (median)':>14} {'wall (median)':>14}")
    print(f"{'Rust examples/sync_images':28} {rust:13.3f}s {rust_wall:13.3f}s")
    print(f"{'Python rha.sync':28} {py:13.3f}s {py_wall:13.3f}s")
    print(f"rha.sync / Rust: {py / rust:.3f} (sync), {py_wall / rust_wall:.3f} (wall; the example's includes process start)")
    same_bytes = all(
        a[1]["bytes_sent"] == b[1]["bytes_sent"] for a, b in zip(results["rust"], results["python"])
    )
    print(f"same bytes sent by both: {same_bytes}")
    return 0 if py <= rust * 1.05 else 1


if __name__ == "__main__":
    sys.exit(main())
