"""Summarises a pytest-benchmark JSON file: per-op medians, ratios to gswfast, bandwidth.

python benchmarks/summarize.py bench.json [--markdown]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict


def per_op_seconds(bench: dict) -> float:
    return bench["stats"]["median"] / bench.get("extra_info", {}).get("ops_per_call", 1)


def summarize(data: dict) -> list[dict]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for bench in data["benchmarks"]:
        groups[bench["group"] or bench["name"]].append(bench)
    ceiling = None
    for bench in groups.get("cuda-copy-bandwidth", []):
        ceiling = bench["extra_info"]["bytes_per_op"] / per_op_seconds(bench)
    rows = []
    for group, benches in sorted(groups.items()):
        ours = [b for b in benches if b.get("extra_info", {}).get("role") == "gswfast"]
        base = per_op_seconds(ours[0]) if ours else None
        for bench in sorted(benches, key=per_op_seconds):
            t = per_op_seconds(bench)
            row = {
                "group": group,
                "name": bench["name"],
                "median_ms": t * 1e3,
                "slowdown_vs_gswfast": t / base if base else None,
            }
            moved = bench.get("extra_info", {}).get("bytes_per_op")
            if moved and group != "cuda-copy-bandwidth":
                row["GB_per_s"] = moved / t / 1e9
                if ceiling:
                    row["fraction_of_copy_bandwidth"] = moved / t / ceiling
            elif moved:
                row["GB_per_s"] = moved / t / 1e9
            rows.append(row)
    return rows


def to_markdown(rows: list[dict]) -> str:
    lines = [
        "| group | benchmark | median per op | x gswfast time | GB/s | of copy BW |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{r['slowdown_vs_gswfast']:.2f}" if r["slowdown_vs_gswfast"] else ""
        gbs = f"{r['GB_per_s']:.0f}" if "GB_per_s" in r else ""
        frac = f"{r['fraction_of_copy_bandwidth']:.0%}" if "fraction_of_copy_bandwidth" in r else ""
        lines.append(
            f"| {r['group']} | {r['name']} | {r['median_ms']:.3f} ms | {ratio} | {gbs} | {frac} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("json_file")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()
    with open(args.json_file) as f:
        rows = summarize(json.load(f))
    print(to_markdown(rows) if args.markdown else json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
