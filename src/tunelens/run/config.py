"""The run config: one YAML naming the model, each stage's settings and which stages run.

Every key is checked, in every section: an unknown key is an error naming it with the closest valid one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from .. import checks as C
from ..checks import BadSetting
from ..errors import TunelensError, suggest

STAGES = ("tune", "audit", "diff", "graft", "repair", "report")
# tune settings the pipeline owns: where the run goes and how it is resumed and displayed
_PIPELINE_TUNE_KEYS = ("model", "out", "resume", "overwrite", "progress")


@dataclass
class AuditSection:
    suites: list[str] = field(default_factory=lambda: ["task", "safety", "over_refusal", "forgetting"])
    tasks: list[str] = field(default_factory=list)  # default: the tune's data tasks
    limit: int | None = None  # the most items drawn from each pool
    gate: list[str] = field(default_factory=list)  # e.g. "safety.refusal_rate.delta >= -0.05"
    seed: int = 0
    # seconds for the whole audit (sequential suites stop drawing when it is spent); `tunelens audit --budget` has
    # the same default (a test holds them equal)
    budget: float | None = 300.0
    full: bool = False  # every item of every pool, no sequential stopping
    chunk: int = 32  # items between two looks
    margins: dict = field(default_factory=dict)  # equivalence margins, e.g. {task.accuracy: 0.02}
    # keep the base model's results for the next run (audit and repair re-audits): true = $TUNELENS_HOME/audit-base,
    # or a folder; off by default, so a run folder depends on nothing outside it
    base_cache: bool | str | None = None
    # who judges replies refusal / partial / compliance / degenerate (audit and repair re-audits): rules, probe,
    # rules+probe, hf:PATH or guard:PATH; `tunelens audit --judge` has the same default
    judge: str = "rules+probe"

    def __post_init__(self):
        from ..audit.base_store import store_dir
        from ..judge import check_spec

        try:
            check_spec(self.judge, "judge")
        except C.TunelensError as e:
            raise C.BadSetting("judge", str(e)) from None

        self.suites = C.strings(self.suites, "suites", example="suites: [task, safety]")
        self.tasks = C.strings(self.tasks, "tasks", example="tasks: [tasks/mine.yaml]")
        C.integer(self.limit, "limit", 1, null=True)
        self.gate = C.strings(self.gate, "gate", example='gate: ["safety.refusal_rate.delta >= -0.05"]')
        C.integer(self.seed, "seed", 0)
        C.number(self.budget, "budget", above=0, null=True)
        C.flag(self.full, "full")
        C.integer(self.chunk, "chunk", 1)
        if not isinstance(self.margins, dict):
            raise C.BadSetting(f"margins: expected a mapping of metric to margin, e.g. margins: {{task.accuracy: 0.02}}; "
                               f"got {C.got(self.margins)}")
        for k, v in self.margins.items():
            C.number(v, f"margins.{k}", above=0)
        store_dir(self.base_cache)  # raises on a value that is neither a flag nor a folder


@dataclass
class DiffSection:
    rank: bool = True
    rank_max_dim: int | None = None

    def __post_init__(self):
        C.flag(self.rank, "rank")
        C.integer(self.rank_max_dim, "rank_max_dim", 1, null=True)


@dataclass
class GraftSection:
    task: str | None = None  # default: the first audit task
    sparsities: list[float] = field(default_factory=lambda: [1e-3])
    steps: int = 10
    lr: float = 1e7
    examples: int = 64
    batch_size: int = 16
    select_limit: int = 32
    eval_limit: int | None = 64
    include_embeddings: bool = False
    seed: int = 0

    def __post_init__(self):
        C.text(self.task, "task", null=True)
        if not isinstance(self.sparsities, list) or not self.sparsities:
            raise BadSetting("sparsities", f"sparsities must be a non-empty list of fractions in (0, 1], e.g. "
                                           f"[0.001, 0.01], got {C.got(self.sparsities)}")
        for s in self.sparsities:
            C.number(s, "sparsities", above=0, at_most=1)
        C.integer(self.steps, "steps", 0)
        C.number(self.lr, "lr", above=0)
        for name in ("examples", "batch_size", "select_limit"):
            C.integer(getattr(self, name), name, 1)
        C.integer(self.eval_limit, "eval_limit", 1, null=True)
        C.flag(self.include_embeddings, "include_embeddings")
        C.integer(self.seed, "seed", 0)


@dataclass
class RepairSection:
    # each: {method: NAME, name: optional label, ...method options} (options also accepted under `options:`)
    candidates: list[dict] = field(default_factory=list)
    suites: list[str] | None = None  # re-audit suites; default: the audit's
    tasks: list[str] | None = None  # default: the audit's
    limit: int | None = None  # default: the audit's
    select: str | None = None  # e.g. "task.accuracy >= 0.9*tuned"

    def __post_init__(self):
        C.mappings(self.candidates, "candidates", example="[{method: interpolate, alpha: 0.5}]")
        self.suites = C.strings(self.suites, "suites", null=True, example="suites: [task, safety]")
        self.tasks = C.strings(self.tasks, "tasks", null=True, example="tasks: [tasks/mine.yaml]")
        C.integer(self.limit, "limit", 1, null=True)
        if self.select is not None:
            from ..repair.sweep import validate_select

            validate_select(self.select)


@dataclass
class ReportSection:
    pass


SECTIONS = {"audit": AuditSection, "diff": DiffSection, "graft": GraftSection, "repair": RepairSection,
            "report": ReportSection}


@dataclass
class RunConfig:
    model: str = "default"  # the base model
    tuned: str | None = None  # an existing tuned model, when the tune stage does not run
    stages: list[str] = field(default_factory=lambda: list(STAGES))  # the enabled stages, in pipeline order
    tune: dict = field(default_factory=dict)  # TuneConfig settings (see `tunelens tune --help`)
    audit: AuditSection = field(default_factory=AuditSection)
    diff: DiffSection = field(default_factory=DiffSection)
    graft: GraftSection = field(default_factory=GraftSection)
    repair: RepairSection = field(default_factory=RepairSection)
    report: ReportSection = field(default_factory=ReportSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def audit_tasks(self) -> list[str]:
        from ..tune.examples import parse_mix

        if self.audit.tasks:
            return list(self.audit.tasks)
        data = list(self.tune.get("data") or [])
        if isinstance(self.tune.get("data"), str):
            data = [self.tune["data"]]
        return data + [t for t, _ in parse_mix(self.tune.get("mix") or [])]

    def tune_config(self, out: Path, progress: bool = False):
        from ..tune import load_config

        return load_config(model=self.model, out=str(out), resume=True, progress=progress, **self.tune)


def _unknown(key, valid, where: str) -> TunelensError:
    return TunelensError(f"{where}unknown key '{key}'" + suggest(key, valid, f"; valid keys: {', '.join(valid)}",
                                                                 cutoff=0.5))


def _section(cls, raw, name: str, where: str, lines: dict):
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise TunelensError(f"{where}section '{name}' must be a mapping of settings")
    valid = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in valid:
            raise _unknown(f"{name}.{key}", [f"{name}.{v}" for v in valid], where)
    try:
        return cls(**raw)
    except BadSetting as e:
        raise e.located(where, lines, name) from None
    except (TypeError, TunelensError) as e:
        raise TunelensError(f"{where}section '{name}': {e}") from None


def _stages(raw, where: str) -> list[str]:
    """`stages:` as a list of the stages to run, or a mapping stage -> true/false."""
    if isinstance(raw, dict):
        for k in raw:
            if k not in STAGES:
                raise _unknown(f"stages.{k}", [f"stages.{s}" for s in STAGES], where)
        return [s for s in STAGES if raw.get(s, True)]
    if isinstance(raw, str):
        raw = [s.strip() for s in raw.split(",") if s.strip()]
    if not isinstance(raw, list):
        raise TunelensError(f"{where}'stages' must be a list of stage names or a mapping stage: true/false")
    for s in raw:
        if s not in STAGES:
            raise TunelensError(f"{where}unknown stage '{s}'" + suggest(s, STAGES, f"; stages: {', '.join(STAGES)}"))
    return [s for s in STAGES if s in raw]


def _check_tune(raw, where: str, lines: dict) -> dict:
    from ..tune.config import KEYS, TuneConfig

    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise TunelensError(f"{where}section 'tune' must be a mapping of settings")
    valid = [k for k in KEYS if k not in _PIPELINE_TUNE_KEYS]
    for key in raw:
        if key not in valid:
            if key in _PIPELINE_TUNE_KEYS:
                raise TunelensError(f"{where}'tune.{key}' is set by the pipeline; "
                                    + ("name the base model with the top-level 'model:' key" if key == "model" else
                                       "remove it"))
            raise _unknown(f"tune.{key}", [f"tune.{v}" for v in valid], where)
    try:
        TuneConfig(**raw)  # its own checks: every value's type and range, method, data present
    except BadSetting as e:
        raise e.located(where, lines, "tune") from None
    except (TypeError, TunelensError) as e:
        raise TunelensError(f"{where}section 'tune': {e}") from None
    return dict(raw)


def _check_candidates(section: RepairSection, where: str) -> None:
    """Normalise each candidate to {name, method, options}; method and options are checked by the repair
    registry when it is installed."""
    try:
        from ..repair import core as R
        import tunelens.repair  # noqa: F401  (registers the built-in methods)
    except ImportError:  # pragma: no cover
        R = None
    out, names = [], set()
    for i, c in enumerate(section.candidates):
        if not isinstance(c, dict) or "method" not in c:
            raise TunelensError(f"{where}repair.candidates[{i}] must be a mapping with a 'method' key, "
                                "e.g. {method: interpolate, alpha: 0.5}")
        c = dict(c)
        method = c.pop("method")
        name = str(c.pop("name", None) or _default_name(method, c))
        options = dict(c.pop("options", None) or {})
        options.update(c)
        if R is not None and R.REPAIRS:
            if method not in R.REPAIRS:
                raise _unknown(method, sorted(R.REPAIRS), f"{where}repair.candidates[{i}]: method: ")
            valid = [f.name for f in dataclasses.fields(R.get(method).Options)]
            for key in options:
                if key not in valid:
                    raise _unknown(f"repair.candidates[{i}].{key}", [f"repair.candidates[{i}].{v}" for v in valid],
                                   where)
        if name in names:
            raise TunelensError(f"{where}two repair candidates are named '{name}'; give one a different 'name:'")
        names.add(name)
        out.append({"name": name, "method": method, "options": options})
    section.candidates = out


def _default_name(method: str, options: dict) -> str:
    opts = options.get("options") or {k: v for k, v in options.items() if k != "options"}
    return "-".join([method] + [f"{k}{v}" for k, v in sorted(opts.items()) if not isinstance(v, (dict, list))])


def parse_config(raw: dict, where: str = "", lines: dict | None = None) -> RunConfig:
    """`where`: the message prefix naming the file ("run.yaml: "); `lines`: its keys' lines (checks.key_lines)."""
    lines = lines or {}
    if not isinstance(raw, dict):
        raise TunelensError(f"{where}expected a mapping of settings")
    valid = [f.name for f in dataclasses.fields(RunConfig)]
    for key in raw:
        if key not in valid:
            raise _unknown(key, valid, where)
    cfg = RunConfig(
        model=str(raw.get("model") or "default"),
        tuned=None if raw.get("tuned") is None else str(raw["tuned"]),
        stages=_stages(raw.get("stages", list(STAGES)), where),
        **{name: _section(cls, raw.get(name), name, where, lines) for name, cls in SECTIONS.items()},
    )
    if "tune" in cfg.stages:
        if cfg.tuned:
            raise TunelensError(f"{where}'tuned: {cfg.tuned}' names an existing model but the tune stage is "
                                "enabled; remove 'tuned' or disable the tune stage (stages: {tune: false})")
        cfg.tune = _check_tune(raw.get("tune"), where, lines)
    else:
        cfg.tune = _check_tune(raw.get("tune"), where, lines) if raw.get("tune") else {}
        if not cfg.tuned and any(s in cfg.stages for s in ("audit", "diff", "graft", "repair")):
            raise TunelensError(f"{where}the tune stage is disabled: name the tuned model with 'tuned: PATH'")
    _check_candidates(cfg.repair, where)
    if "repair" in cfg.stages and not cfg.repair.candidates:
        raise TunelensError(f"{where}the repair stage needs 'repair.candidates' (e.g. - {{method: interpolate, "
                            "alpha: 0.5}), or disable it (stages: {repair: false})")
    if "audit" in cfg.stages and not cfg.audit.suites:
        raise TunelensError(f"{where}'audit.suites' is empty")
    return cfg


def load_run_config(path: str | Path) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise TunelensError(f"no such run config: {path}")
    raw = C.read_yaml(path) or {}  # a syntax error names the file and the line
    return parse_config(raw, f"{path}: ", C.key_lines(path))
