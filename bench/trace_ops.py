"""Where a profiled step's time goes, per op: total and self time (time not inside a nested op) of each ATen op
in a chrome trace written by `build/bench_moe --trace PREFIX` (LibTorch's RecordProfile), largest self time first.

    .venv/bin/python bench/trace_ops.py TRACE.json [--top N]
"""
import argparse
import collections
import json


def self_times(events):
    """(name -> [calls, total us, self us]) from complete ('X') events, nesting found per thread by time."""
    table = collections.defaultdict(lambda: [0, 0.0, 0.0])
    by_thread = collections.defaultdict(list)
    for e in events:
        if e.get("ph") == "X":
            by_thread[e.get("tid")].append(e)
    for evs in by_thread.values():
        evs.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack = []  # open events: [end, name, child time]
        for e in evs:
            while stack and stack[-1][0] <= e["ts"]:
                end, name, child, dur = stack.pop()
                table[name][2] += dur - child
            if stack:
                stack[-1][2] += e["dur"]
            table[e["name"]][0] += 1
            table[e["name"]][1] += e["dur"]
            stack.append([e["ts"] + e["dur"], e["name"], 0.0, e["dur"]])
        while stack:
            end, name, child, dur = stack.pop()
            table[name][2] += dur - child
    return table


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    table = self_times(json.load(open(args.trace)))
    total_self = sum(v[2] for v in table.values())
    print(f"{'op':44s} {'calls':>6s} {'total ms':>9s} {'self ms':>8s} {'self %':>7s}")
    for name, (calls, total, own) in sorted(table.items(), key=lambda kv: -kv[1][2])[: args.top]:
        print(f"{name[:44]:44s} {calls:6d} {total / 1e3:9.2f} {own / 1e3:8.2f} {100 * own / total_self:6.1f}%")
    print(f"{'all ops (self)':44s} {'':6s} {'':9s} {total_self / 1e3:8.2f}")


if __name__ == "__main__":
    main()
