#!/usr/bin/env python3
"""The Debezium comparison as a picture: latency CDFs (transaction start -> broker append
time) per contender and rate, and catch-up throughput bars (median, min-max whiskers).

    python3 benches/plot.py $CARGO_TARGET_DIR/bench/debezium.json out.png

Written by scripts/bench.sh --against debezium after the run (needs matplotlib).
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"relay": "#1f77b4", "debezium": "#d62728", "bare": "#7f7f7f",
          "pg_recvlogical": "#2ca02c"}
LABELS = {"relay": "outbox-relay", "debezium": "Debezium (Connect + Event Router)",
          "bare": "bare producer (broker floor)", "pg_recvlogical": "pg_recvlogical (ceiling)"}


def main(src, dst):
    data = json.load(open(src))
    cmp = data.get("compare", {})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.2), gridspec_kw={"width_ratios": [3, 2]})

    styles = ["-", "--", ":", "-."]
    for i, (rate, by) in enumerate(sorted(cmp.get("steady", {}).items(), key=lambda x: int(x[0]))):
        for k in ("relay", "debezium"):
            s = by.get(k)
            if not s or not s.get("cdf_start_to_append_ms"):
                continue
            pts = s["cdf_start_to_append_ms"]
            xs = [max(p[1], 0.05) for p in pts]
            ys = [p[0] for p in pts]
            d = s.get("start_to_append") or {}
            ax1.plot(xs, ys, styles[i % len(styles)], color=COLORS[k],
                     label=f"{LABELS[k]}, {int(rate):,}/s (p99 {d.get('p99_ms', float('nan')):.1f} ms)")
    ax1.set_xscale("log")
    ax1.set_xlabel("transaction start → broker append time (ms, log scale)")
    ax1.set_ylabel("percentile")
    ax1.set_ylim(0, 100.5)
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=8, loc="lower right")
    ax1.set_title("Steady-state latency (single-row transactions)")

    names, med, lo, hi, cols = [], [], [], [], []
    for k in ("relay", "debezium", "pg_recvlogical", "bare"):
        c = cmp.get("catchup", {}).get(k)
        if not c or not c.get("events_per_s"):
            continue
        e = c["events_per_s"]
        names.append(LABELS[k].replace(" (", "\n("))
        med.append(e["median"])
        lo.append(e["median"] - e["min"])
        hi.append(e["max"] - e["median"])
        cols.append(COLORS[k])
    bars = ax2.bar(range(len(names)), med, yerr=[lo, hi], color=cols, capsize=4)
    for b, m in zip(bars, med):
        ax2.text(b.get_x() + b.get_width() / 2, b.get_height(), f"{m:,.0f}",
                 ha="center", va="bottom", fontsize=8)
    ax2.set_xticks(range(len(names)))
    ax2.set_xticklabels(names, fontsize=8)
    ax2.set_ylabel("events/s")
    n = data.get("options", {}).get("events", 0)
    ax2.set_title(f"Catch-up of {n:,} rows\n(process start → last event on the broker)")
    ax2.grid(True, axis="y", alpha=0.3)

    m = data.get("machine", {})
    fig.suptitle(f"outbox-relay vs Debezium {m.get('debezium', '?')} · {m.get('broker', '?')} · "
                 f"PostgreSQL {m.get('postgresql', '?')} · {m.get('nproc', '?')} cores", fontsize=10)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)
    print(f"[bench] picture: {dst}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
