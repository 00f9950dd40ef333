#!/usr/bin/env python3
"""Reads the wrk outputs of one bench/ingest.sh run and prints a table with ratios to Probot."""
import re, sys, pathlib

def unit_ms(v, u):
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[u]

def read(path):
    if not path.exists():
        return None
    t = path.read_text()
    rps = re.search(r"Requests/sec:\s+([\d.]+)", t)
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", t)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", t)
    rss = re.findall(r"(?:loaded |peer |)rss_kb:\s+(\d+)", t)
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", t)
    drain = re.search(r"drain_secs:\s+([\d.]+)", t)
    return {
        "rps": float(rps.group(1)) if rps else None,
        "p50": unit_ms(*p50.groups()) if p50 else None,
        "p99": unit_ms(*p99.groups()) if p99 else None,
        "rss_mb": int(rss[-1]) / 1024 if rss else None,
        "non2xx": int(errors.group(1)) if errors else 0,
        "drain": float(drain.group(1)) if drain else None,
    }

out = pathlib.Path(sys.argv[1])
rows = {name: read(out / f"{name}.txt") for name in ["probot", "ceiling", "sqlite", "postgres", "postgres-archive"]}
peer = rows.get("probot")
print(f"\n{'':16} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'RSS MB':>7} {'non-2xx':>8} {'vs Probot':>10} {'of ceiling':>10} {'drain s':>8}")
for name, r in rows.items():
    if not r or r["rps"] is None:
        continue
    ratio = f"{r['rps'] / peer['rps']:.2f}x" if peer and peer["rps"] else "-"
    ceil = rows.get("ceiling")
    of_ceiling = f"{r['rps'] / ceil['rps']:.2f}" if ceil and ceil["rps"] else "-"
    rss = f"{r['rss_mb']:.1f}" if r["rss_mb"] is not None else "-"
    drain = f"{r['drain']:.1f}" if r["drain"] is not None else "-"
    print(f"{name:16} {r['rps']:9.0f} {r['p50']:8.2f} {r['p99']:8.2f} {rss:>7} {r['non2xx']:8d} {ratio:>10} {of_ceiling:>10} {drain:>8}")
