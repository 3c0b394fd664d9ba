"""One function per pipeline stage. Each writes its artifacts into its own folder (`ctx.out`) and returns
a small dict the pipeline records in run.json (or None). A result with "incomplete" (why) records the stage as
incomplete: the next run calls it again with `ctx.retry` set, and it redoes only what failed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TunelensError
from .config import RunConfig


@dataclass
class StageContext:
    cfg: RunConfig
    run_dir: Path
    out: Path  # this stage's folder
    base: str  # the base model spec (or, `model: NAME`, that tune stage's output)
    tuned: str | None  # the tuned model (the tune stage's model/ or the config's `tuned:`)
    dirs: dict[str, Path] = field(default_factory=dict)  # every stage's folder, for the report
    retry: bool = False  # the folder holds an incomplete attempt: keep what succeeded, redo what failed
    stage: str = "tune"  # this stage's key: a pipeline stage, or tune:NAME for a named tune stage
    outputs: dict[str, Path] = field(default_factory=dict)  # each named tune stage's output (tune_output), by NAME


MERGED = "merged"  # a tune stage with `merge: true`: its adapter merged into a full model folder, beside model/


def tune_output(folder: Path) -> Path:
    """The model a tune stage's folder gives the stages that read it: merged/ when it merged its adapter, else
    model/ (the adapter, or the full fine-tune)."""
    return folder / MERGED if (folder / MERGED).is_dir() else folder / "model"


def tune_stage(ctx: StageContext) -> dict:
    """Resumes from the folder's last checkpoint after a kill (tunelens.tune's own resume). A stage that tunes on
    another (`model: NAME`) tunes that stage's output; with `merge: true` it then merges its adapter."""
    import json

    from ..tune import tune

    _, model, merge = ctx.cfg.tune_stage(ctx.stage)
    # an adapter records its base's path: give it the absolute one, as `tunelens tune --model $PWD/...` would
    spec = str(Path(ctx.outputs[model]).resolve()) if model in ctx.outputs else None
    run_json = ctx.out / "run.json"
    notes = []
    if (ctx.out / "model").is_dir() and run_json.is_file() and json.loads(run_json.read_text()).get("status") == "finished":
        notes.append("the tune had finished before the run was stopped")
    else:
        tune(ctx.cfg.tune_config(ctx.out, key=ctx.stage, model=spec))
    if merge:
        notes.append(merge_adapter(ctx.out / "model", ctx.out / MERGED))
    return {"note": "; ".join(notes)} if notes else {}


def merge_adapter(model: Path, out: Path) -> str:
    """`model`'s adapter merged into its base, written as a full model folder `out` (built beside it, made
    portable like every folder tunelens writes, then renamed into place); a full fine-tune is left as it is."""
    import os
    import shutil

    from ..models import resolve_model
    from ..models.portable import make_portable, warn_unportable

    if out.is_dir():
        return f"merged into {out.name}/ before the run was stopped"
    if not (model / "adapter_config.json").is_file():
        return f"a full fine-tune: {model.name}/ is the full model, nothing to merge"
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    handle = resolve_model(str(model), merge_adapter=True)
    handle.model.save_pretrained(tmp)
    handle.tokenizer.save_pretrained(tmp)
    warn_unportable(make_portable(tmp))
    os.replace(tmp, out)
    return f"adapter merged into {out.name}/"


def audit_stage(ctx: StageContext) -> dict:
    from ..audit import AuditContext, check_tokenizers, run_audit
    from ..audit.base_store import attach
    from ..audit.runner import failed_suites
    from ..data import load_task
    from ..engines import audit_models, scoring_precision
    from ..models import resolve_model

    a = ctx.cfg.audit
    specs = [load_task(t) for t in ctx.cfg.audit_tasks()]
    with audit_models(ctx.base, ctx.tuned, a) as (hb, ht):
        check_tokenizers(hb, ht)
        (hb, ht), precision = scoring_precision(a, [hb, ht], reload=lambda: (
            resolve_model(ctx.base), resolve_model(ctx.tuned, merge_adapter="auto")))
        actx = AuditContext(base=hb, tuned=ht, tasks=specs, limit=a.limit, seed=a.seed, progress=False,
                            sequential=not a.full, budget=a.budget, chunk=a.chunk, margins=dict(a.margins),
                            judge=a.judge, precision=precision)
        store = attach(actx, a.base_cache)
        ledger = run_audit(actx, a.suites, ctx.out, a.gate or None, resume=ctx.retry)
    failed = [g["expr"] for g in ledger.get("gates", []) if g.get("outcome") == "fail"]
    unsure = [g["expr"] for g in ledger.get("gates", []) if g.get("outcome") == "inconclusive"]
    broken = failed_suites(ledger)
    verdict = (ledger.get("verdict") or {}).get("label")
    note = "; ".join(([f"verdict: {verdict}"] if verdict else [])
                     + ([f"gate failed: {', '.join(failed)}"] if failed else [])
                     + ([f"gate inconclusive: {', '.join(unsure)}"] if unsure else [])
                     + ([retry_note(ledger)] if ledger.get("reused_suites") else [])
                     + ([store.reuse_note()] if store and store.reuse_note() else []))
    return {"gate_failed": failed, "gate_inconclusive": unsure, "note": note or None,
            "incomplete": f"suite(s) failed: {', '.join(broken)}" if broken else None}


def retry_note(ledger: dict) -> str:
    reused = ledger.get("reused_suites") or []
    redone = [s for s in ledger["suites"] if s not in reused]
    return (f"retried {', '.join(redone) or 'nothing'}; reused {', '.join(reused)} from the earlier attempt")


def diff_stage(ctx: StageContext) -> dict:
    from ..diff import diff_models

    d = ctx.cfg.diff
    diff_models(ctx.base, ctx.tuned, out=ctx.out, rank=d.rank, rank_max_dim=d.rank_max_dim)
    return {}


def graft_task(cfg: RunConfig) -> str:
    if cfg.graft.task:
        return cfg.graft.task
    tasks = cfg.audit_tasks()
    if not tasks:
        raise TunelensError("graft: no task to localize; set 'graft.task' (or 'audit.tasks')")
    return tasks[0]


def graft_stage(ctx: StageContext) -> dict:
    from ..diff.graft import graft

    g = ctx.cfg.graft
    graft(ctx.base, ctx.tuned, graft_task(ctx.cfg), g.sparsities, steps=g.steps, lr=g.lr, examples=g.examples,
          batch_size=g.batch_size, out=ctx.out, seed=g.seed, include_embeddings=g.include_embeddings,
          select_limit=g.select_limit, eval_limit=g.eval_limit)
    return {}


def repair_settings(cfg: RunConfig) -> dict:
    """The re-audit settings, the audit's where the repair section leaves them unset."""
    r = cfg.repair
    return {"suites": list(r.suites or cfg.audit.suite_names()), "tasks": list(r.tasks or cfg.audit_tasks()),
            "limit": r.limit if r.limit is not None else cfg.audit.limit, "select": r.select,
            "dtype": r.dtype or cfg.audit.dtype}


def uses_graft_mask(cfg: RunConfig) -> bool:
    return any(c["method"] == "graft" and c["options"].get("mask") == "graft" for c in cfg.repair.candidates)


def _candidates(ctx: StageContext) -> list[dict]:
    """`mask: graft` names the graft stage's mask at the candidate's `sparsity` (default: the graft's first); an
    option naming a tune stage (`safety_adapter: NAME`) is that stage's output folder."""
    from ..diff.graft import sparsity_tag

    out = []
    for c in ctx.cfg.repair.candidates:
        c = {**c, "options": {k: str(ctx.outputs[v]) if isinstance(v, str) and v in ctx.outputs else v
                              for k, v in c["options"].items()}}
        if c["method"] == "graft" and c["options"].get("mask") == "graft":
            s = c["options"].pop("sparsity", None) or ctx.cfg.graft.sparsities[0]
            path = ctx.dirs["graft"] / f"mask-s{sparsity_tag(float(s))}.safetensors"
            if not path.is_file():
                raise TunelensError(f"repair candidate '{c['name']}': the graft stage wrote no mask for sparsity "
                                    f"{s} ({path}); use one of graft.sparsities {ctx.cfg.graft.sparsities}")
            c["options"]["mask"] = str(path)
        out.append(c)
    return out


def repair_stage(ctx: StageContext) -> dict:
    from ..repair.sweep import run_sweep

    s = repair_settings(ctx.cfg)
    flat = [{"name": c["name"], "method": c["method"], **c["options"]} for c in _candidates(ctx)]
    result = run_sweep(ctx.base, ctx.tuned, flat, ctx.out, suites=s["suites"], tasks=s["tasks"], limit=s["limit"],
                       select=s["select"], progress=False, base_cache=ctx.cfg.audit.base_cache, resume=ctx.retry,
                       judge=ctx.cfg.audit.judge, dtype=s["dtype"])
    failed = [r["name"] for r in result["rows"] if r["status"] == "failed"]
    ref_broken = result.get("reference_failed_suites") or []
    reused = result.get("reused") or []
    note = "; ".join([f"selected {result['selected']}" if result.get("selected") else "no candidate selected"]
                     + ([f"reused {', '.join(reused)} from the earlier attempt"] if reused else []))
    why = "; ".join(([f"candidate(s) failed: {', '.join(failed)}"] if failed else [])
                    + ([f"the tuned model's re-audit had failed suite(s): {', '.join(ref_broken)}"] if ref_broken
                       else []))
    return {"note": note, "incomplete": why or None}


def report_stage(ctx: StageContext) -> dict:
    from ..report import build_report

    paths = build_report(ctx.run_dir) or {}
    return {"note": ", ".join(str(p) for p in paths.values()) if isinstance(paths, dict) else None}


FUNCS = {"tune": tune_stage, "audit": audit_stage, "diff": diff_stage, "graft": graft_stage,
         "repair": repair_stage, "report": report_stage}
