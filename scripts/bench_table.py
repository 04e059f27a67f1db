#!/usr/bin/env python3
"""Turns the results of `cargo bench --bench kernels` into a markdown table.

For every benchmark of the kernels groups it reads criterion's
<criterion-dir>/<group>/<function>/<parameter>/new/{benchmark.json,estimates.json}: the bytes the
kernel must move (benchmark.json's throughput) and the mean time per call (estimates.json), and
prints

    kernel | shape | time (µs) | GB/s | roofline GB/s | ratio

where the roofline is the `copy` group's measured bandwidth (the fastest copy entry) and the
ratio is the kernel's GB/s over it: 1.0 means the kernel moves its bytes as fast as a plain
device copy does.

Criterion keeps every benchmark's latest result, so results of an earlier run (say, on the CPU
before a GPU run) stay in the table unless that run's directories are removed first
(`rm -rf target/criterion/{copy,matmul,...}`) or `--criterion-dir` points elsewhere.

    python3 scripts/bench_table.py [--criterion-dir target/criterion]
"""

import argparse
import json
import os
import re
import sys

# The groups of benches/kernels.rs, in the order the table lists them.
GROUPS = [
    "copy",
    "matmul",
    "reshape_and_cache",
    "paged_attention",
    "add_rms_norm",
    "rotary_inplace",
    "silu_and_mul",
    "lora_delta",
    "sampling",
]


def load(criterion_dir):
    """Yields (group, function, parameter, bytes, mean_ns) for every kernels result."""
    for group in GROUPS:
        root = os.path.join(criterion_dir, group)
        if not os.path.isdir(root):
            continue
        for dirpath, _, files in sorted(os.walk(root)):
            if os.path.basename(dirpath) != "new" or "benchmark.json" not in files or "estimates.json" not in files:
                continue
            try:
                with open(os.path.join(dirpath, "benchmark.json"), encoding="utf-8") as f:
                    bench = json.load(f)
                with open(os.path.join(dirpath, "estimates.json"), encoding="utf-8") as f:
                    est = json.load(f)
                throughput = bench.get("throughput") or {}
                nbytes = throughput.get("Bytes")
                mean_ns = est["mean"]["point_estimate"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                print(f"bench_table: skipping {dirpath}: {e}", file=sys.stderr)
                continue
            if nbytes is None:
                print(f"bench_table: skipping {dirpath}: no Throughput::Bytes", file=sys.stderr)
                continue
            yield (
                bench.get("group_id", group),
                bench.get("function_id") or group,
                bench.get("value_str") or "",
                int(nbytes),
                float(mean_ns),
            )


def natural(s):
    """Sort key that orders embedded numbers by value (b4 before b32)."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", s)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--criterion-dir", default="target/criterion", help="criterion's output directory (default: %(default)s)")
    args = ap.parse_args()

    rows = list(load(args.criterion_dir))
    if not rows:
        sys.exit(f"bench_table: no kernels results under {args.criterion_dir} (run `cargo bench --bench kernels` first)")

    copies = [r for r in rows if r[0] == "copy"]
    roofline = max((b / t for _, _, _, b, t in copies), default=None)  # bytes/ns == GB/s
    if roofline is None:
        print("bench_table: no `copy` result, so no roofline; the ratio column is empty", file=sys.stderr)

    order = {g: i for i, g in enumerate(GROUPS)}
    rows.sort(key=lambda r: (order.get(r[0], len(GROUPS)), natural(r[1]), natural(r[2])))

    print("| kernel | shape | time (µs) | GB/s | roofline GB/s | ratio |")
    print("|---|---|---:|---:|---:|---:|")
    for _, function, param, nbytes, mean_ns in rows:
        gbs = nbytes / mean_ns
        roof = f"{roofline:.1f}" if roofline else ""
        ratio = f"{gbs / roofline:.2f}" if roofline else ""
        print(f"| {function} | {param} | {mean_ns / 1e3:.1f} | {gbs:.1f} | {roof} | {ratio} |")


if __name__ == "__main__":
    main()
