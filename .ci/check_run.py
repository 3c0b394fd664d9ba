"""Fail unless a `tunelens run` folder is complete: every enabled stage `done`, every audit suite `ok`, every
repair candidate `ok` (and the tuned model's re-audit whole). Standard library only: it runs in the runtime-only
virtual environment the quickstart was installed into.

    python .ci/check_run.py RUN_DIR
"""

import json
import sys
from pathlib import Path


def problems(run_dir: Path) -> list[str]:
    out = []
    run = json.loads((run_dir / "run.json").read_text())
    for stage, st in run["stages"].items():
        if st["status"] == "skipped" and "disabled in the config" in (st.get("note") or ""):
            continue
        if st["status"] != "done":
            out.append(f"stage {stage}: {st['status']}" + (f" ({st.get('error') or st.get('note')})"
                                                           if st.get("error") or st.get("note") else ""))
    ledgers = []
    audit = run["stages"]["audit"]
    if audit.get("dir"):
        ledgers.append(("audit", run_dir / audit["dir"] / "ledger.json"))
    repair = run["stages"]["repair"]
    if repair.get("dir"):
        folder = run_dir / repair["dir"]
        sweep = json.loads((folder / "sweep.json").read_text())
        out += [f"repair candidate {r['name']}: {r['status']} ({r.get('error')})" for r in sweep["rows"]
                if r["status"] != "ok"]
        ledgers.append(("repair: tuned", folder / "tuned" / "audit" / "ledger.json"))
        ledgers += [(f"repair: {r['name']}", folder / "candidates" / r["name"] / "audit" / "ledger.json")
                    for r in sweep["rows"]]
    for what, path in ledgers:
        if not path.is_file():
            out.append(f"{what}: no ledger at {path}")
            continue
        for suite, block in json.loads(path.read_text())["suites"].items():
            if block["status"] != "ok":
                out.append(f"{what}: suite {suite} {block['status']}: {block.get('error')}")
            elif not block.get("entries"):
                out.append(f"{what}: suite {suite} has no entries")
    if not (run_dir / "report.html").is_file():
        out.append("no report.html")
    return out


if __name__ == "__main__":
    found = problems(Path(sys.argv[1]))
    for p in found:
        print(f"check_run: {p}", file=sys.stderr)
    if found:
        sys.exit(1)
    print(f"check_run: {sys.argv[1]}: every stage done, every suite and candidate ok")
