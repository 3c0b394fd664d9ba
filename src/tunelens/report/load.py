"""Read a run folder (or a lone audit folder) into one RunData, tolerating any missing or failed stage.

Every stage is looked up through run.json first (its status, folder and error); a stage without a
usable folder gets a one-line `why` that the report prints in place of its section.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TunelensError
from ..io import read_jsonl

STAGES = ("tune", "audit", "diff", "graft", "repair")
# the file whose presence means the stage produced something the report can read
STAGE_FILES = {"tune": "train_log.jsonl", "audit": "ledger.json", "diff": "heatmap.csv", "graft": "graft.json",
               "repair": "sweep.json"}


@dataclass
class Stage:
    name: str
    status: str  # done / incomplete / failed / skipped / pending / absent
    dir: Path | None = None
    seconds: float | None = None
    error: str | None = None
    note: str | None = None
    why: str | None = None  # set when the report cannot show this stage


@dataclass
class RunData:
    root: Path
    kind: str  # "run" or "audit"
    run: dict = field(default_factory=dict)
    stages: dict[str, Stage] = field(default_factory=dict)
    ledger: dict | None = None
    records: dict[str, list[dict]] = field(default_factory=dict)
    heatmap: dict | None = None  # {"layers", "modules", "values"}
    diff: dict | None = None
    graft: dict | None = None
    sweep: dict | None = None
    train_log: list[dict] = field(default_factory=list)
    curve: dict | None = None
    problems: list[str] = field(default_factory=list)  # unreadable files, for the reader to know


def load_run(path) -> RunData:
    root = Path(path)
    if not root.is_dir():
        raise TunelensError(f"report: {root} is not a folder; pass a run folder (with run.json) "
                            "or an audit folder (with ledger.json)")
    if (root / "run.json").exists():
        data = RunData(root, "run")
        data.run = _required_json(root / "run.json")
        if not isinstance(data.run.get("stages", {}), dict):
            raise TunelensError(f"{root / 'run.json'}: 'stages' is not a mapping; not a `tunelens run` state file")
        for name in STAGES:  # "the tune" is run.json's tuned_stage (tune:NAME with named tune stages)
            key = (data.run.get("tuned_stage") or name) if name == "tune" else name
            data.stages[name] = _stage(root, name, (data.run.get("stages") or {}).get(key))
    elif (root / "ledger.json").exists():
        data = RunData(root, "audit")
        data.stages["audit"] = Stage("audit", "done", root)
        for name in STAGES:
            data.stages.setdefault(name, Stage(name, "absent", why="not part of a stand-alone audit"))
    else:
        raise TunelensError(f"report: {root} has neither run.json (a `tunelens run` folder) nor ledger.json "
                            "(a `tunelens audit` folder)")
    _read_stage_files(data)
    return data


def _stage(root: Path, name: str, info: dict | None) -> Stage:
    if info is None:
        folder = _find_done_folder(root / name)
        if folder is None:
            return Stage(name, "absent", why=f"the {name} stage is not part of this run")
        return Stage(name, "done", folder)
    st = Stage(name, info.get("status") or "pending", None, info.get("seconds"), info.get("error"), info.get("note"))
    if info.get("dir"):
        st.dir = root / info["dir"]
    if st.status == "failed":
        st.why = f"the {name} stage failed: {st.error or 'no error recorded'}"
    elif st.status == "skipped":
        st.why = f"the {name} stage was skipped" + (f": {st.note}" if st.note else "")
    elif st.status not in ("done", "incomplete"):  # incomplete: finished, with a suite or candidate failed
        st.why = f"the {name} stage has not run yet (status: {st.status})"
    elif st.dir is None or not st.dir.is_dir():
        st.why = f"the {name} stage is marked done but its folder {info.get('dir')!r} is missing"
    return st


def _find_done_folder(stage_root: Path) -> Path | None:
    """Without a run.json entry: the newest <stage>/<hash>/ folder holding a DONE marker."""
    if not stage_root.is_dir():
        return None
    done = [p for p in stage_root.iterdir() if (p / "DONE").exists()]
    return max(done, key=lambda p: (p / "DONE").stat().st_mtime) if done else None


def _read_stage_files(data: RunData) -> None:
    for name, st in data.stages.items():
        if st.why or st.dir is None:
            continue
        main = st.dir / STAGE_FILES[name]
        if not main.exists():
            st.why = f"the {name} stage folder {_rel(data.root, st.dir)} has no {STAGE_FILES[name]}"
            continue
        try:
            getattr(_Readers, name)(data, st.dir)
        except (OSError, ValueError, KeyError, TypeError) as e:
            st.why = f"could not read {_rel(data.root, main)}: {type(e).__name__}: {e}"


class _Readers:
    @staticmethod
    def tune(data: RunData, d: Path) -> None:
        data.train_log = [r for r in read_jsonl(d / "train_log.jsonl") if "loss" in r and "step" in r]
        if (d / "curve.json").exists():
            data.curve = _json(d / "curve.json", data)

    @staticmethod
    def audit(data: RunData, d: Path) -> None:
        data.ledger = _required_json(d / "ledger.json")
        if not isinstance(data.ledger.get("suites"), dict):
            raise TunelensError(f"{d / 'ledger.json'}: no 'suites' mapping; not a `tunelens audit` ledger")
        # only the items of suites this ledger holds as ok: a stray items file is never shown as current
        for suite, block in data.ledger["suites"].items():
            f = d / "items" / f"{suite}.jsonl"
            if not isinstance(block, dict) or block.get("status") != "ok" or not f.is_file():
                continue
            try:
                data.records[suite] = read_jsonl(f)
            except (OSError, ValueError) as e:
                data.problems.append(f"could not read {_rel(data.root, f)}: {e}")

    @staticmethod
    def diff(data: RunData, d: Path) -> None:
        data.heatmap = read_heatmap_csv(d / "heatmap.csv")
        if (d / "diff.json").exists():
            data.diff = _json(d / "diff.json", data)

    @staticmethod
    def graft(data: RunData, d: Path) -> None:
        data.graft = json.loads((d / "graft.json").read_text(encoding="utf-8"))

    @staticmethod
    def repair(data: RunData, d: Path) -> None:
        data.sweep = json.loads((d / "sweep.json").read_text(encoding="utf-8"))


def read_heatmap_csv(path: Path) -> dict:
    """heatmap.csv of `tunelens diff`: header `layer,<module>...`, one row per layer, empty cells = no tensor."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or not rows[0] or rows[0][0] != "layer":
        raise ValueError("expected a header row starting with 'layer'")
    modules = rows[0][1:]
    layers, values = [], []
    for r in rows[1:]:
        if not r:
            continue
        layers.append(r[0])
        values.append([float(v) if v.strip() else None for v in r[1:len(modules) + 1]])
    return {"layers": layers, "modules": modules, "values": values}


def _required_json(path: Path) -> dict:
    """A file the report cannot do without: malformed is an error naming the file and the position."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TunelensError(f"{path}: not valid JSON at line {e.lineno}, column {e.colno} ({e.msg}); was it cut "
                            "short? Rerun the command that wrote it") from None
    except UnicodeDecodeError as e:
        raise TunelensError(f"{path}: not UTF-8 text (byte {e.start})") from None
    if not isinstance(obj, dict):
        raise TunelensError(f"{path}: expected a JSON object, found {type(obj).__name__}")
    return obj


def _json(path: Path, data: RunData):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        data.problems.append(f"could not read {_rel(data.root, path)}: {e}")
        return None


def _rel(root: Path, p: Path) -> str:
    try:
        return str(p.relative_to(root))
    except ValueError:
        return str(p)
