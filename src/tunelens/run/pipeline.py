"""The chain tune -> audit -> diff -> graft -> repair -> report, each stage cached by a hash of its inputs.

A stage's folder is RUN_DIR/<stage>/<hash12> (a named tune stage's RUN_DIR/tune/<NAME>/<hash12>, its key
"tune:NAME"); the hash covers the stage's own settings and the hashes of the
stages it reads, so a changed setting reruns exactly what depends on it. A folder is complete when it holds
DONE (written last, atomically); anything else is a stopped attempt, restarted (the tune resumes from its last
checkpoint). run.json is rewritten atomically at every change; its layout is docs/run.md's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
import traceback
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from datetime import datetime, timezone
from pathlib import Path

from .. import __version__
from .. import progress as P
from ..errors import TunelensError
from ..io import write_json
from . import stages as S
from .config import RunConfig

SCHEMA = "tunelens.run/1"
DONE = "DONE"
# what each stage reads; the report reads every stage
INCOMPLETE = "INCOMPLETE"  # a finished attempt in which a suite or a repair candidate failed: retried, never reused
DEPS = {"tune": [], "audit": ["tune"], "diff": ["tune"], "graft": ["tune"], "repair": ["tune"],
        "report": ["tune", "audit", "diff", "graft", "repair"]}
EXIT_STAGE_FAILED, EXIT_GATE_FAILED, EXIT_GATE_INCONCLUSIVE = 1, 3, 4


def deps(cfg: RunConfig, stage: str) -> list[str]:
    """The stages `stage` reads. With one `tune:` section these are DEPS (the repair also reads the graft when a
    candidate uses its mask, `mask: graft`). A named tune stage reads the stage it tunes on (`model: NAME`);
    audit, diff, graft and repair read "the tune" (`tuned:`) and the base's stage (`model: NAME`); the repair also
    the stages its candidates name; the report reads every stage."""
    if stage == "report":
        return [s for s in cfg.stage_order() if s != "report"]
    if stage.partition(":")[0] == "tune":
        k = cfg.stage_of(cfg.tune_stage(stage)[1]) if "tune" in cfg.stages else None
        return [k] if k else []
    out = [cfg.tuned_key() or "tune"] + ([cfg.base_key()] if cfg.base_key() else [])
    if stage == "repair":
        out += (["graft"] if S.uses_graft_mask(cfg) else []) + cfg.candidate_stages()
    return list(dict.fromkeys(out))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _settings(cfg: RunConfig, stage: str) -> dict:
    """The part of the config a stage's output depends on (besides its inputs)."""
    if stage == "tune" or stage.startswith("tune:"):
        if stage != "tune":  # a named stage: its model (a spec, or the stage it reads: its hash is an input)
            settings, model, merge = cfg.tune_stage(stage)
            return {"model": model, "tune": settings, "merge": merge}
        if "tune" in cfg.stages:
            return {"model": cfg.model, "tune": {k: v for k, v in cfg.tune.items() if k != "dtype"},
                    **_precision(cfg.tune.get("dtype", "auto"))}
        path = Path(cfg.tuned)  # an existing model: its identity is its location and last change
        return {"tuned": str(path.resolve()) if path.exists() else cfg.tuned,
                "mtime": max((p.stat().st_mtime for p in path.iterdir()), default=0) if path.is_dir() else None}
    base = {"model": cfg.model}
    if stage == "audit":
        audit = {k: v for k, v in dataclasses.asdict(cfg.audit).items() if k != "dtype"}
        return {**base, **audit, "tasks": cfg.audit_tasks(), **_precision(cfg.audit.dtype)}
    if stage == "diff":
        return {**base, **dataclasses.asdict(cfg.diff)}
    if stage == "graft":
        return {**base, **dataclasses.asdict(cfg.graft), "task": S.graft_task(cfg)}
    if stage == "repair":
        settings = S.repair_settings(cfg)
        return {**base, "candidates": cfg.repair.candidates, **{k: v for k, v in settings.items() if k != "dtype"},
                **_precision(settings["dtype"])}
    return {"enabled": cfg.stages}


def _precision(dtype) -> dict:
    """A stage's precision as far as it changes the result: nothing for fp32 (and for auto where bf16 is not
    native, which is fp32), so those runs keep the hashes they had before the setting existed."""
    from ..precision import DTYPES, planned

    if dtype not in DTYPES:
        return {"precision": dtype}  # refused when the stage runs
    p = planned(dtype)
    return {} if p == "fp32" else {"precision": p}


def stage_hashes(cfg: RunConfig) -> dict[str, str]:
    out: dict[str, str] = {}
    enabled = cfg.enabled()
    for stage in cfg.stage_order():
        if stage not in enabled and not (stage == "tune" and cfg.tuned):
            continue
        try:
            settings = _settings(cfg, stage)
        except TunelensError:
            settings = {"unresolved": True}  # reported when the stage runs
        blob = {"stage": stage, "version": __version__, "settings": settings,
                "inputs": {d: out.get(d) for d in deps(cfg, stage)}}
        out[stage] = hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return out


@dataclasses.dataclass
class RunResult:
    run_dir: Path
    state: dict
    exit_code: int

    @property
    def report(self) -> Path | None:
        p = self.run_dir / "report.html"
        return p if p.exists() else None


class Run:
    def __init__(self, cfg: RunConfig, run_dir: Path, config_path: str | None, display):
        self.cfg, self.run_dir, self.display = cfg, Path(run_dir), display
        self.hashes = stage_hashes(cfg)
        self.order, self.enabled = cfg.stage_order(), cfg.enabled()
        self.state = {"schema": SCHEMA, "config": cfg.to_dict(), "config_path": config_path,
                      "stages": {s: {"status": "pending", "dir": None, "hash": self.hashes.get(s), "seconds": None,
                                     "error": None, "note": None, "cached": False} for s in self.order},
                      "order": list(self.order), "tuned_stage": cfg.tuned_key() or "tune", "started": _now(),
                      "finished": None}
        self.gate_failed: list[str] = []
        self.gate_inconclusive: list[str] = []
        self.ran: set[str] = set()  # stages run (not reused) in this invocation

    def folder(self, stage: str) -> Path:
        return self.run_dir.joinpath(*stage.split(":")) / self.hashes[stage]  # tune:NAME -> tune/NAME/<hash>

    def done(self, stage: str) -> bool:
        return stage in self.hashes and (self.folder(stage) / DONE).is_file()

    def save(self) -> None:
        write_json(self.run_dir / "run.json", self.state)

    def mark(self, stage: str, **kw) -> None:
        self.state["stages"][stage].update(kw)
        self.save()

    def output(self, stage: str) -> Path:
        """A tune stage's model: its model/ folder, or merged/ when the stage merges its adapter."""
        return S.tune_output(self.folder(stage))

    def tuned(self) -> str | None:
        key = self.cfg.tuned_key()
        return str(self.output(key)) if key else self.cfg.tuned

    def base(self) -> str:
        key = self.cfg.base_key()
        return str(self.output(key)) if key else self.cfg.model

    def blockers(self, stage: str) -> list[str]:
        return [d for d in deps(self.cfg, stage) if d in self.enabled and self.state["stages"][d]["status"] != "done"]


def run_pipeline(cfg: RunConfig, run_dir, *, config_path: str | None = None, from_stage: str | None = None,
                 only: str | None = None, display: bool = True) -> RunResult:
    """Run (or resume) the pipeline into run_dir. Exit code: 0 ok, 1 a stage failed or is incomplete (a suite or a
    repair candidate failed), 3 the audit gate failed, 4 an audit gate is inconclusive."""
    from_stage, only = (_stage_arg(cfg, flag, st) for flag, st in (("--from", from_stage), ("--only", only)))
    _preflight(cfg)
    from ..outdir import claim

    with claim(run_dir, "run"):  # a run folder, ours alone while we run (not a tune's or an audit's folder)
        return _run_claimed(cfg, run_dir, config_path, from_stage, only, display)


def _stage_arg(cfg: RunConfig, flag: str, st: str | None) -> str | None:
    """--from / --only STAGE as a stage key: a pipeline stage, a named tune stage as tune:NAME or NAME, and
    (--from) `tune` for the first tune stage."""
    if st is None:
        return None
    order = cfg.stage_order()
    key = st if st in order else f"tune:{st}" if f"tune:{st}" in order else None
    if key is None and st == "tune" and flag == "--from":
        key = order[0]
    if key is None:
        hint = (f"; the tune stages are {', '.join(k for k in order if k.startswith('tune:'))}" if st == "tune"
                else f"not a stage; stages: {', '.join(order)}")
        from ..errors import suggest

        raise TunelensError(f"{flag} {st}: " + hint.lstrip("; ") + ("" if st == "tune" else suggest(st, order)))
    if key not in cfg.enabled():
        raise TunelensError(f"{flag} {st}: that stage is disabled in the config")
    return key


def _run_claimed(cfg: RunConfig, run_dir, config_path, from_stage, only, display) -> RunResult:
    run = Run(cfg, run_dir, config_path, display)
    run.run_dir.mkdir(parents=True, exist_ok=True)
    if only and only != "report":
        for d in deps(cfg, only):
            if d in run.enabled and not run.done(d):
                raise TunelensError(f"--only {only} needs the {d} stage's output ({run.folder(d)}), which is not "
                                    "complete; run without --only first")
    forced = set(run.enabled[run.enabled.index(from_stage):]) if from_stage else ({only} if only else set())
    todo = [s for s in run.enabled if not only or s == only]
    with _quiet(), Display(len(todo), enabled=display) as disp:
        for stage in run.order:
            _one(run, stage, stage in todo, stage in forced, disp)
    run.state["finished"] = _now()
    run.save()
    failed = any(s["status"] in ("failed", "incomplete") for s in run.state["stages"].values())
    code = (EXIT_STAGE_FAILED if failed else EXIT_GATE_FAILED if run.gate_failed
            else EXIT_GATE_INCONCLUSIVE if run.gate_inconclusive else 0)
    return RunResult(run.run_dir, run.state, code)


def _preflight(cfg: RunConfig) -> None:
    """Catch a bad suite name or gate before minutes of tuning."""
    if "audit" not in cfg.stages and "repair" not in cfg.stages:
        return
    from ..audit import SUITES
    from ..audit import gate as G

    for suite in cfg.audit.suite_names() + list(cfg.repair.suites or []):
        if suite not in SUITES:
            from ..errors import suggest

            raise TunelensError(f"unknown audit suite '{suite}'" + suggest(suite, SUITES, f"; suites: {', '.join(SUITES)}"))
    for g in cfg.audit.gate:
        G.validate(g)
    from ..data import load_checked_tasks

    try:
        tasks = cfg.audit_tasks()
    except TunelensError:
        tasks = []  # reported by the stage that needs them
    load_checked_tasks(tasks)  # bad rows and template fields, before minutes of tuning


def _one(run: Run, stage: str, todo: bool, forced: bool, disp: "Display") -> None:
    cfg = run.cfg
    kind = stage.partition(":")[0]  # tune:NAME is a tune stage
    if stage not in run.enabled:
        note = "disabled in the config" + (f"; tuned model: {cfg.tuned}" if stage == "tune" and cfg.tuned else "")
        run.mark(stage, status="skipped", note=note)
        return
    rel = str(run.folder(stage).relative_to(run.run_dir))
    if not todo:  # --only another stage: record what is on disk
        done = run.done(stage)
        run.mark(stage, status="done" if done else "pending", dir=rel if done else None, cached=done,
                 seconds=_done_info(run.folder(stage)).get("seconds") if done else None,
                 note=None if done else "not run (--only)")
        return
    blockers = run.blockers(stage) if stage != "report" else []
    if blockers:
        b = blockers[0]
        run.mark(stage, status="skipped", note=f"needs the {b} stage, which {run.state['stages'][b]['status']}")
        disp.advance(stage, "skipped")
        return
    folder = run.folder(stage)
    # the report is reused only when it was built from exactly these finished stages
    report_fresh = stage != "report" or not run.ran and not any(
        run.state["stages"][d]["status"] in ("failed", "skipped", "incomplete") and d in run.enabled
        for d in deps(cfg, "report"))
    if not forced and report_fresh and run.done(stage):
        info = _done_info(folder)
        if stage == "audit":
            run.gate_failed = info.get("result", {}).get("gate_failed") or []
            run.gate_inconclusive = info.get("result", {}).get("gate_inconclusive") or []
        if stage == "report":
            _restore_report(run, folder)
        run.mark(stage, status="done", dir=rel, seconds=info.get("seconds"), cached=True,
                 note=(info.get("result") or {}).get("note"), error=None)
        disp.advance(stage, "cached")
        return
    # an incomplete attempt (a suite or candidate failed) keeps what succeeded; the stage retries the rest
    retry = not forced and (folder / INCOMPLETE).is_file()
    if folder.exists() and not retry and (forced or kind != "tune"):
        shutil.rmtree(folder)  # a stopped attempt: start it again (the tune resumes from its checkpoint)
    folder.mkdir(parents=True, exist_ok=True)
    from ..outdir import mark

    mark(folder, kind)  # what the folder is, for the commands that check (the tune's claim)
    run.mark(stage, status="pending", dir=rel, note=f"running since {_now()}", error=None, cached=False)
    ctx = S.StageContext(cfg=cfg, run_dir=run.run_dir, out=folder, base=run.base(), tuned=run.tuned(),
                         dirs={s: run.folder(s) for s in run.hashes}, retry=retry, stage=stage,
                         outputs={n: run.output(f"tune:{n}") for n in cfg.tunes if f"tune:{n}" in run.hashes})
    t0 = time.perf_counter()
    run.ran.add(stage)
    disp.start(stage)
    try:  # the stage's own prints and warnings go to its log: the display is the one thing on screen
        with open(folder / "stage.log", "a") as log, redirect_stdout(log), redirect_stderr(log), \
                P.reporting(disp.step):  # the stage's steps (tunelens.progress) drive the display
            result = S.FUNCS[kind](ctx) or {}
    except KeyboardInterrupt:
        run.mark(stage, note="interrupted; run the same command again to resume")
        raise
    except Exception as e:  # noqa: BLE001 - a failed stage is recorded; its dependants are skipped
        seconds = round(time.perf_counter() - t0, 2)
        (folder / "error.txt").write_text(traceback.format_exc())
        msg = str(e) if isinstance(e, TunelensError) else f"{type(e).__name__}: {e}"
        run.mark(stage, status="failed", seconds=seconds, error=msg, note=None)
        disp.advance(stage, f"failed: {msg.splitlines()[0][:100] if msg else type(e).__name__}")
        return
    seconds = round(time.perf_counter() - t0, 2)
    if stage == "audit":
        run.gate_failed = result.get("gate_failed") or []
        run.gate_inconclusive = result.get("gate_inconclusive") or []
    if stage == "report":  # a copy per config, restored when that config is run again
        for name in ("report.html", "report.md"):
            if (run.run_dir / name).is_file():
                shutil.copy2(run.run_dir / name, folder / name)
    marker = {"stage": stage, "hash": run.hashes[stage], "seconds": seconds, "finished": _now(), "result": result}
    if result.get("incomplete"):  # not a cache hit: the next run retries what failed
        write_json(folder / INCOMPLETE, marker)
        run.mark(stage, status="incomplete", seconds=seconds, error=result["incomplete"],
                 note="; ".join(filter(None, [result.get("note"), "run the same command again to retry what failed"])))
        disp.advance(stage, f"incomplete: {result['incomplete'][:100]}")
        return
    write_json(folder / DONE, marker)
    (folder / INCOMPLETE).unlink(missing_ok=True)
    run.mark(stage, status="done", seconds=seconds, note=result.get("note"))
    disp.advance(stage, f"{seconds:.1f} s")


def _done_info(folder: Path) -> dict:
    try:
        return json.loads((folder / DONE).read_text())
    except (OSError, ValueError):
        return {}


def _restore_report(run: Run, folder: Path) -> None:
    from ..io import atomic_open

    for name in ("report.html", "report.md"):
        src, dst = folder / name, run.run_dir / name
        if src.is_file() and (not dst.is_file() or dst.read_bytes() != src.read_bytes()):
            with atomic_open(dst, "wb") as f:
                f.write(src.read_bytes())


# ---------------------------------------------------------------------------------------------------- progress


class Display:
    """One rich progress display: the stages (i/N) and the running stage's steps with the time left."""

    def __init__(self, n_stages: int, enabled: bool = True):
        self.n, self.i, self.enabled = n_stages, 0, enabled
        self.progress = None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
                TimeRemainingColumn

            self.console = Console(file=sys.stderr)  # this stream, not the stage log it is redirected to
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
                                     console=self.console, transient=True)
            self.progress.start()
            self.task = self.progress.add_task("", total=None, visible=False)
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()

    def start(self, stage: str) -> None:
        self.i += 1
        if self.progress is None:
            return
        self.progress.reset(self.task, total=None, completed=0, visible=True,
                            description=f"[{self.i}/{self.n}] {stage}")

    def step(self, done: int, total: int | None) -> None:
        """A step of the running stage (its calls to tunelens.progress.step)."""
        if self.progress is not None:
            self.progress.update(self.task, completed=done, total=total)

    def advance(self, stage: str, what: str) -> None:
        if self.progress is None:
            return
        if what in ("cached", "skipped"):
            self.i += 1
        self.progress.console.print(f"[{self.i}/{self.n}] {stage:7s} {what}")


@contextmanager
def _quiet():
    """The pipeline's display replaces the stages' own progress bars and info logs."""
    old = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        import transformers

        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        transformers, verbosity = None, None
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = old
        if transformers is not None:
            transformers.logging.set_verbosity(verbosity)
