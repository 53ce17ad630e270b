"""Run every built host's end-to-end suite and print one compatibility table (host, commit, what ran, result).

Each host's suite runs in its own pytest process with the variables its build recorded (`<dest>/<name>/host.json`),
so one host's failure never hides another's result. The table is also written to `<dest>/matrix.md` with the date
and this repository's commit, so a result always says which code and which host commits it came from.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from . import common
from .specs import HostSpec

ROOT = Path(__file__).resolve().parents[2]


def _run_suite(spec: HostSpec, record: dict, dest: Path) -> dict[str, list[str]]:
    """{"passed"|"failed"|"skipped": [test ids]} of the host's suite."""
    report = dest / "junit.xml"
    env = dict(os.environ, DMD2_HOSTS=str(dest.parent), **record["env"])  # suites may compare with other hosts
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *spec.suite]
    common.log(f"{spec.name}: {' '.join(cmd[3:])}")
    with (dest / "matrix.log").open("w") as out:
        subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    results: dict[str, list[str]] = {"passed": [], "failed": [], "skipped": []}
    if not report.is_file():
        return results
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("failure") is not None or case.find("error") is not None:
            results["failed"].append(name)
        elif case.find("skipped") is not None:
            results["skipped"].append(name)
        else:
            results["passed"].append(name)
    return results


def run_matrix(specs: list[HostSpec], dest_root: Path) -> int:
    """Run the suites of the built hosts among `specs`; print and save the table; 1 if any test failed."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True, capture_output=True)
    rows = ["| host | commit | suite | passed | failed | skipped | result |", "|---|---|---|---|---|---|---|"]
    failed_any = False
    details = []
    for spec in specs:
        dest = dest_root / spec.name
        record = common.read_record(dest)
        if record is None:
            rows.append(f"| {spec.label} | {spec.commit} | - | - | - | - | not built (python -m tests.hosts build "
                        f"{spec.name}) |")
            continue
        results = _run_suite(spec, record, dest)
        n = {k: len(v) for k, v in results.items()}
        ok = n["failed"] == 0 and n["passed"] > 0
        failed_any |= not ok
        commit = record["commits"].get("", spec.commit)[:10]
        rows.append(f"| {spec.label} | {commit} | {' '.join(spec.suite)} | {n['passed']} | {n['failed']} | "
                    f"{n['skipped']} | {'pass' if ok else 'FAIL'} |")
        details += [f"- {spec.name}: failed {t}" for t in results["failed"]]
        details += [f"- {spec.name}: skipped {t}" for t in results["skipped"]]
    table = "\n".join(rows)
    stamp = f"{datetime.date.today()} on repository commit {head.stdout.strip() or '?'}"
    print(table)
    print("\n".join(details))
    dest_root.mkdir(parents=True, exist_ok=True)
    (dest_root / "matrix.md").write_text(f"{stamp}\n\n{table}\n\n" + "\n".join(details) + "\n")
    return 1 if failed_any else 0
