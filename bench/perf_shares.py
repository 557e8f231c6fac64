#!/usr/bin/env python3
"""Shares of a `perf record --call-graph` profile, from `perf script -F ip,sym,dso` on stdin.

BENCHMARKS.md quotes two kinds of figures from profiles that `bench/profile.sh` takes:

  inclusive [N]   every function's share of the user-mode samples (the server's own code:
                  samples whose innermost frame is not the kernel's), counting a sample once
                  for each function on its stack; the N largest (default 60).
  stacks [DEPTH]  samples grouped by their DEPTH innermost frames (default 4), e.g. to see
                  where `futex` calls come from in a profile of syscalls:sys_enter_futex.

  perf script -i FILE -F ip,sym,dso | bench/perf_shares.py inclusive 80
"""
import collections
import re
import sys

FRAME = re.compile(r"\s+[0-9a-f]+\s+(.*?)\s+\((.*)\)$")


def samples(lines):
    """Yields each sample's frames as (symbol, dso), innermost first."""
    frames = []
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if frames:
                yield frames
            frames = []
            continue
        match = FRAME.match(line)
        if match:
            frames.append((match.group(1), match.group(2)))
    if frames:
        yield frames


def name(symbol):
    """A symbol without its offset, generic arguments and inlining mark."""
    symbol = re.sub(r"\+0x[0-9a-f]+$", "", symbol).replace(" (inlined)", "")
    for _ in range(4):
        symbol = re.sub(r"<[^<>]*>", "", symbol)
    return symbol.strip()[:100]


def inclusive(all_samples, top):
    counts, total = collections.Counter(), 0
    for frames in all_samples:
        if "kernel" in frames[0][1]:
            continue
        total += 1
        counts.update({name(symbol) for symbol, _ in frames})
    print(f"{total} user-mode samples")
    for symbol, n in counts.most_common(top):
        print(f"{100 * n / total:5.1f} %  {symbol}")


def stacks(all_samples, depth):
    counts, total = collections.Counter(), 0
    for frames in all_samples:
        total += 1
        inner = [name(symbol) for symbol, _ in frames if name(symbol) != "syscall"]
        counts[" < ".join(inner[:depth])] += 1
    print(f"{total} samples")
    for stack, n in counts.most_common(20):
        print(f"{100 * n / total:5.1f} %  {stack}")


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "inclusive"
    if mode == "inclusive":
        inclusive(samples(sys.stdin), int(sys.argv[2]) if len(sys.argv) > 2 else 60)
    elif mode == "stacks":
        stacks(samples(sys.stdin), int(sys.argv[2]) if len(sys.argv) > 2 else 4)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
