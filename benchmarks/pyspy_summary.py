"""Where a profiled run's CPU time went, from py-spy's raw (collapsed) stacks.

    py-spy record -r 50 --subprocesses -f raw -o stacks.txt -- python -m scip_gpu ...
    python benchmarks/pyspy_summary.py stacks.txt [--top 25] > summary.md

Each line of the raw format is ``frame;frame;...;leaf COUNT`` (root first; with
``--subprocesses`` the first frames name the process and its parents). Writes Markdown: the samples per process,
then per process the functions with the largest inclusive share (every stack that passes
through the function counts once; scip_gpu's own functions) and the largest self share (the
leaf, any function). Standard library only.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

_LINE = re.compile(r":\d+\)$")  # a frame's line number: "f (file.py:12)" -> "f (file.py)"
# the process frames that --subprocesses puts first (parent, then child ...): a command line in
# quotes, which may itself hold ";" (multiprocessing's "spawn_main; spawn_main(...)")
_PROCS = re.compile(r'(?:process (\d+):"([^"]*)"(?:;|$))+')
_PROC = re.compile(r'process (\d+):"([^"]*)"')


def parse(path: Path) -> list[tuple[str, list[str], int]]:
    """(process, frames root first, count) of every line of a raw py-spy file; the process is
    the innermost of the line's process frames ("pid N: command"), or "process" without them."""
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        line = line.rstrip()
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        proc = "process"
        m = _PROCS.match(stack)
        if m:
            pid, cmd = _PROC.findall(m.group(0))[-1]
            proc = f"pid {pid}: {cmd[:100]}"
            stack = stack[m.end():]
        frames = [_LINE.sub(")", f) for f in stack.split(";") if f]
        stacks.append((proc, frames, int(count)))
    return stacks


OURS = "scip_gpu/"  # the inclusive ranking lists this project's functions only


def summarize(stacks, top: int = 25) -> dict:
    """{process: {"samples", "inclusive": [(frame, n)], "self": [(frame, n)]}}, the processes
    by samples, most first."""
    samples: Counter = Counter()
    inclusive: dict = defaultdict(Counter)
    own: dict = defaultdict(Counter)
    for proc, frames, n in stacks:
        samples[proc] += n
        for f in dict.fromkeys(f for f in frames if OURS in f):
            inclusive[proc][f] += n
        own[proc][frames[-1] if frames else "(no Python frame)"] += n
    return {p: {"samples": samples[p], "inclusive": inclusive[p].most_common(top), "self": own[p].most_common(top)}
            for p, _ in samples.most_common()}


def markdown(summary: dict, source: str) -> str:
    total = sum(v["samples"] for v in summary.values()) or 1
    out = [f"# CPU samples by process: {source}", "", "| process | samples | share |", "|---|---|---|"]
    out += [f"| {p} | {v['samples']} | {100 * v['samples'] / total:.1f} % |" for p, v in summary.items()]
    for p, v in summary.items():
        n = v["samples"] or 1
        out += ["", f"## {p}", "", "| scip_gpu function, inclusive | % | leaf (self) | % |", "|---|---|---|---|"]
        for (fi, ni), (fs, ns) in zip(v["inclusive"], v["self"] + [("", 0)] * len(v["inclusive"])):
            out.append(f"| `{fi[:110]}` | {100 * ni / n:.1f} | `{fs[:110]}` | {100 * ns / n:.1f} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("raw", type=Path, help="py-spy record -f raw output")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args(argv)
    stacks = parse(args.raw)
    if not stacks:
        print(f"pyspy_summary: no stacks in {args.raw}", file=sys.stderr)
        return 1
    sys.stdout.write(markdown(summarize(stacks, args.top), str(args.raw)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
