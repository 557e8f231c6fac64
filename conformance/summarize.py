#!/usr/bin/env python3
"""Summarises a kosoku/Autobahn report directory (its index.json) as Markdown: counts of
each verdict per top-level section, then every case that is not OK with its description and
the report's explanation. Exits 1 if any case has a verdict other than OK, INFORMATIONAL,
NON-STRICT (conformant, a SHOULD not met), or UNIMPLEMENTED in sections 12 and 13
(permessage-deflate, which Herald does not negotiate). Usage: summarize.py REPORT_DIR"""

import json
import os
import sys
from collections import Counter, defaultdict


def case_key(case_id):
    return tuple(int(part) for part in case_id.split("."))


def main(report_dir):
    with open(os.path.join(report_dir, "index.json")) as f:
        index = json.load(f)
    (agent, cases), = index.items()
    per_section = defaultdict(Counter)
    verdicts = Counter()
    not_ok = []
    for case_id in sorted(cases, key=case_key):
        entry = cases[case_id]
        behavior, close = entry["behavior"], entry["behaviorClose"]
        verdict = behavior if behavior != "OK" else (
            "OK" if close in ("OK", "INFORMATIONAL") else "CLOSE " + close)
        per_section[case_id.split(".")[0]][verdict] += 1
        verdicts[verdict] += 1
        if verdict not in ("OK", "INFORMATIONAL"):
            with open(os.path.join(report_dir, entry["reportfile"])) as f:
                detail = json.load(f)
            not_ok.append((case_id, verdict, detail))

    names = sorted(verdicts)
    print(f"{len(cases)} cases: " + ", ".join(f"{verdicts[n]} {n}" for n in names))
    print()
    print("| Section | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for section in sorted(per_section, key=int):
        counts = per_section[section]
        print(f"| {section} | " + " | ".join(str(counts[n]) for n in names) + " |")
    print()
    accepted = ("OK", "INFORMATIONAL", "NON-STRICT")
    failures = [case_id for case_id, verdict, _ in not_ok
                if verdict not in accepted
                and not (verdict == "UNIMPLEMENTED" and case_id.split(".")[0] in ("12", "13"))]
    if not_ok:
        print("Cases that are not OK:")
        print()
        for case_id, verdict, detail in not_ok:
            description = " ".join(detail.get("description", "").split())
            result = " ".join(str(detail.get("result", "")).split())
            print(f"- {case_id} {verdict}: {description} — {result}")
    if failures:
        print()
        print("NOT CONFORMANT: " + ", ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "conformance/reports"))
