#!/usr/bin/env python3
"""Writes a bench/compare.sh run into BENCHMARKS.md.

    python3 bench/record.py bench/results/<run> BENCHMARKS.md
    python3 bench/record.py --check BENCHMARKS.md

Replaces the section between the two markers below (appending it after "## How to run"'s
section the first time) with the run's summary.md: its header, the table of medians and the
targets judged from them. The per-run table stays in summary.md, which the section links to.
Everything outside the markers is left as it is. With --check, nothing is written: it exits
1 unless the section is exactly what this script writes from the summary.md it links to (so
no one edits the recorded figures by hand; .ci/run checks it).
"""

import os
import re
import sys

BEGIN = "<!-- bench/compare.sh writes from here to the end marker; edits inside are overwritten -->"
END = "<!-- end of the section bench/compare.sh writes -->"


def section(run_dir, benchmarks):
    with open(os.path.join(run_dir, "summary.md")) as f:
        lines = f.read().splitlines()
    body = []
    for line in lines:
        if line.startswith("# "):
            continue
        if line.startswith("## Every run"):
            break
        body.append(line.replace("## Targets, judged from this run", "### Targets, judged from this run"))
    while body and not body[0].strip():
        body.pop(0)
    while body and not body[-1].strip():
        body.pop()
    link = os.path.relpath(os.path.join(run_dir, "summary.md"), os.path.dirname(benchmarks) or ".")
    where = (f"[summary]({link})" if not link.startswith("..")
             else f"`{os.path.abspath(run_dir)}/summary.md` (outside the repository)")
    return [BEGIN, "## Latest run (written by `bench/compare.sh`)", "",
            f"Every run of it, with the noise beside each: {where}.", ""] + body + [END]


def check(benchmarks):
    with open(benchmarks) as f:
        text = f.read().splitlines()
    if BEGIN not in text or END not in text:
        sys.exit(f"record.py: {benchmarks} has no section written by bench/compare.sh")
    recorded = text[text.index(BEGIN):text.index(END) + 1]
    link = next((m.group(1) for line in recorded
                 for m in [re.search(r"\[summary\]\(([^)]+)/summary\.md\)", line)] if m), None)
    if link is None:
        sys.exit(f"record.py: the section in {benchmarks} links to no summary in the repository")
    run_dir = os.path.join(os.path.dirname(benchmarks) or ".", link)
    if section(run_dir, benchmarks) != recorded:
        sys.exit(f"record.py: the section in {benchmarks} is not what {run_dir}/summary.md gives "
                 f"(edited by hand?); run: python3 bench/record.py {run_dir} {benchmarks}")


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: record.py RUN_DIR BENCHMARKS.md | record.py --check BENCHMARKS.md")
    if sys.argv[1] == "--check":
        check(sys.argv[2])
        return
    run_dir, benchmarks = sys.argv[1], sys.argv[2]
    with open(benchmarks) as f:
        text = f.read().splitlines()
    new = section(run_dir, benchmarks)
    if BEGIN in text and END in text:
        start, end = text.index(BEGIN), text.index(END)
        if end < start:
            sys.exit(f"record.py: the markers in {benchmarks} are out of order")
        text[start:end + 1] = new
    else:
        # After the "How to run" section: before the next "## " heading that follows it.
        at = len(text)
        seen = False
        for i, line in enumerate(text):
            if line.startswith("## How to run"):
                seen = True
            elif seen and line.startswith("## "):
                at = i
                break
        text[at:at] = new + [""]
    with open(benchmarks, "w") as f:
        f.write("\n".join(text) + "\n")


if __name__ == "__main__":
    main()
