"""The `tunelens` command line: a thin layer over the Python API."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from .errors import TunelensError
from .run.config import AuditSection, DiffSection, EvalSettings, GraftSection
from .settings import cli_options
from .tune.config import CurveSettings, TuneConfig  # plain data (the trainer loads on first use)
# the repair registry with its plug-ins, for the --method help (typer builds every option's help text on each
# invocation, so a lazy one would cost the same import)
from .repair import REPAIRS


app = typer.Typer(
    help="Fine-tune a language model, then show what the fine-tune bought and what it cost.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_state = {"debug": False}


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")):
    _state["debug"] = debug


def _friendly(fn):
    """User errors become one line on stderr and exit code 2; --debug shows the traceback. An OSError (a path
    that is a file, a read-only folder, a full disk) is a user error too: the path, the reason, what to do."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TunelensError as e:
            if _state["debug"]:
                raise
            typer.echo(f"tunelens: error: {e}", err=True)
            raise typer.Exit(e.exit_code)
        except OSError as e:
            if _state["debug"]:
                raise
            from .outdir import os_error_message

            typer.echo(f"tunelens: error: {os_error_message(e)}", err=True)
            raise typer.Exit(2)

    return wrapper


def _print_metrics(result) -> None:
    from rich.console import Console
    from rich.table import Table

    t = result.info["task"]
    table = Table(title=f"{result.info['model']['name']} on {t['name']} [{t['split']}], n={t['n_items']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("95% CI", justify="right")
    for name, m in result.metrics.items():
        lo, hi = m["ci95"]
        table.add_row(name, f"{m['value']:.4f}", f"[{lo:.4f}, {hi:.4f}]")
    Console(stderr=False).print(table)


@app.command("eval")
@_friendly
@cli_options(EvalSettings)
def eval_cmd(
    model: str = typer.Option("default", "--model", "-m",
                              help="'default' (embedded SmolLM2-135M-Instruct), an HF folder, a PEFT adapter folder, "
                                   "a .gguf file or a hub id."),
    task: str = typer.Option(..., "--task", "-t", help="Task spec YAML, a data file, or a built-in task name "
                                                       "(see `tunelens tasks`)."),
    out: Path = typer.Option(Path("out/eval"), "--out", "-o", help="Folder for results.json and items.jsonl."),
    base: Optional[str] = typer.Option(None, help="Base model for a PEFT adapter (default: from adapter_config)."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow loading .bin/pickle checkpoints "
                                                                    "(they can run code)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Run model code shipped with the "
                                                                              "checkpoint."),
    settings: dict = None,
):
    """Evaluate a model on a task: writes results.json and items.jsonl, prints a metrics table."""
    from .data import load_items, load_task
    from .evaluate import evaluate
    from .models import resolve_model
    from .outdir import claim
    from .settings import build

    e = build(EvalSettings, settings)
    spec = load_task(task)
    if e.fewshot is not None:
        spec.fewshot = e.fewshot
    load_items(spec, e.split or spec.eval_split)  # every bad row or template field is named before the model loads
    with claim(out, "eval"):  # checked (ours, writable, free) before the model loads and the items are scored
        handle = resolve_model(model, base=base, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                               merge_adapter="auto")
        result = evaluate(handle, spec, split=e.split, limit=e.limit, token_budget=e.token_budget,
                          batch_size=e.batch_size, seed=e.seed)
        result.save(out)
    _print_metrics(result)
    typer.echo(f"wrote {out / 'results.json'} and {out / 'items.jsonl'}")


@app.command("tune")
@_friendly
@cli_options(TuneConfig, unset=True)
def tune_cmd(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML with any of the settings below; "
                                                                      "flags given on the command line win."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="KEY=VALUE for any setting, repeatable (VALUE "
                                                                 "read as YAML), e.g. --set lora_dropout=0.1."),
    settings: dict = None,
):
    """Fine-tune a model on task data (chat-formatted SFT, loss on the reply only); saves a PEFT adapter or a
    full model folder under OUT/model, plus train_log.jsonl and run.json. Every option is a TuneConfig setting
    (tune/config.py), also settable in the --config YAML."""
    from .settings import given, parse_sets
    from .tune import load_config, tune

    cfg = load_config(config, **{**parse_sets(set_, TuneConfig), **given(settings)})
    final = tune(cfg)
    typer.echo(f"wrote {final} (evaluate it with: tunelens eval --model {final} --task TASK)")


@app.command("curve")
@_friendly
@cli_options(TuneConfig, only=("model", "data", "max_steps", "seed"), unset=True, into="tuning")
@cli_options(CurveSettings)
def curve_cmd(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Tuning YAML (as for `tunelens tune`)."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Folder for the runs and curve.json "
                                                                "(default out/curve)."),
    settings: dict = None,
    tuning: dict = None,
):
    """Learning curve: tune on growing fractions of the data, evaluate each on the validation split, fit a
    saturating power law, predict the score at 2x and 4x the data and the data needed for a target."""
    from .settings import build, given, split
    from .tune import load_config
    from .tune.curve import learning_curve

    try:
        fracs = [float(x) for x in split(settings["fractions"])]
    except ValueError:
        raise TunelensError(f"--fractions must be numbers separated by commas, got '{settings['fractions']}'") from None
    c = build(CurveSettings, {**settings, "fractions": fracs})
    cfg = load_config(config, **given(tuning), out=out or "out/curve")
    s = learning_curve(cfg, c.fractions, eval_task=c.eval_task, metric=c.metric, target=c.target, split=c.split)
    metric, target = c.metric, c.target
    for p in s["points"]:
        typer.echo(f"{p['examples']:>6} examples  {metric}={p['score']:.4f}")
    if "holdout" in s:
        h = s["holdout"]
        typer.echo(f"fit on the smaller fractions predicts {h['predicted']:.4f} at {h['examples']} examples "
                   f"(actual {h['actual']:.4f}, error {h['abs_error']:.4f})")
    typer.echo(f"predicted {metric}: {s['predicted']['2x']:.4f} at 2x data, {s['predicted']['4x']:.4f} at 4x data")
    if "target" in s:
        need = s["target"]["examples_needed"]
        typer.echo(f"examples needed for {metric}={target}: " + ("not reached by the fit" if need is None else f"{need:.0f}"))
    typer.echo(f"wrote {Path(cfg.out) / 'curve.json'}")


@app.command("audit")
@_friendly
@cli_options(AuditSection)
def audit_cmd(
    base: str = typer.Option("default", "--base", "-b", help="The model before fine-tuning."),
    tuned: str = typer.Option(..., "--tuned", "-t", help="The fine-tuned model (folder, PEFT adapter, ...)."),
    out: Path = typer.Option(Path("out/audit"), "--out", "-o", help="Folder for ledger.json, items/, summary.md."),
    allow_tokenizer_mismatch: bool = typer.Option(False, "--allow-tokenizer-mismatch",
                                                  help="Audit models whose tokenizers differ."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow .bin/pickle checkpoints."),
    lm_eval: Optional[list[str]] = typer.Option(None, "--lm-eval", help="An lm-evaluation-harness multiple-choice "
                                                                       "task to run for both models (repeatable); "
                                                                       "its samples feed task/compatibility/calibration."),
    lm_eval_include: Optional[str] = typer.Option(None, "--lm-eval-include", help="Folder of local lm-eval task "
                                                                                   "YAMLs."),
    base_cache: Optional[Path] = typer.Option(None, "--base-cache", help="Folder that keeps the base model's "
                                              "results, so the next audit against the same base runs only the tuned "
                                              "model (default: $TUNELENS_HOME/audit-base). Results are keyed by the "
                                              "base's weights, the items, the settings and tunelens' code."),
    no_base_cache: bool = typer.Option(False, "--no-base-cache", help="Run the base model even if its results "
                                                                      "are cached, and keep none."),
    settings: dict = None,
):
    """Compare a base and a tuned model on the same items: task gain, safety, over-refusal, forgetting,
    context use, robustness, flips and calibration.

    Each suite draws items in chunks along a stratified, seeded order and stops once its headline metrics are
    decided (gain, cost or equivalent, by an anytime-valid confidence sequence), its pool is used up, or its
    share of --budget is spent. Every entry also gets its fixed-n paired 95% interval. The verdict (improved,
    improved with costs, regressed, no material change, insufficient evidence) uses only decisions that
    survive Holm's adjustment. Exit codes: 0 ok, 1 a suite failed, 2 bad input, 3 a gate failed,
    4 a gate inconclusive."""
    from .audit import AuditContext, check_tokenizers, run_audit
    from .audit.base_store import attach
    from .data import load_checked_tasks
    from .engines import audit_models, scoring_precision
    from .outdir import claim
    from .settings import build, split

    if lm_eval:  # before minutes of loading models
        from .audit.lmeval_bridge import require_lm_eval

        require_lm_eval()
    a = build(AuditSection, {**settings, "suites": split(settings["suites"]),
                             "margins": parse_margins(settings["margins"])})
    specs = load_checked_tasks(a.tasks)  # bad rows and template fields are named before the models load
    from .audit import gate as G

    for g in a.gate:  # a malformed gate fails before models load and suites run
        G.validate(g)
    from .judge import load_judge

    load_judge(a.judge)  # a bad judge path fails before the models load
    if lm_eval and a.engine != "hf":
        raise TunelensError("--lm-eval runs lm-evaluation-harness on transformers models: use it with --engine hf")
    with claim(out, "audit"), audit_models(base, tuned, a, allow_pickle=allow_pickle) as (hb, ht):
        check_tokenizers(hb, ht, allow_tokenizer_mismatch)
        from .models import resolve_model

        (hb, ht), precision = scoring_precision(a, [hb, ht], reload=lambda: (
            resolve_model(base, allow_pickle=allow_pickle),
            resolve_model(tuned, allow_pickle=allow_pickle, merge_adapter="auto")))
        ctx = AuditContext(base=hb, tuned=ht, tasks=specs, limit=a.limit, seed=a.seed, sequential=not a.full,
                           budget=a.budget, chunk=a.chunk, margins=a.margins, judge=a.judge, precision=precision)
        for t in lm_eval or []:
            from .audit.lmeval_bridge import add_lm_eval_task

            add_lm_eval_task(ctx, t, lm_eval_include)
        store = attach(ctx, False if no_base_cache else base_cache or True)
        ledger = run_audit(ctx, a.suites, out, a.gate or None)
    _print_ledger(ledger)
    if store and store.reuse_note():
        typer.echo(store.reuse_note())
    typer.echo(f"wrote {out / 'ledger.json'}, {out / 'summary.md'} and {out / 'items'}/")
    from .audit.runner import failed_suites

    broken = failed_suites(ledger)
    if broken:  # a failed suite is never a silent success
        typer.echo(f"tunelens: suite(s) failed: {', '.join(broken)} (the error is in {out / 'ledger.json'})", err=True)
        raise typer.Exit(1)
    code = gate_exit(ledger)
    if code:
        raise typer.Exit(code)


def parse_margins(items: list[str] | None) -> dict[str, float]:
    """--margin METRIC=VALUE (repeatable), each a number > 0."""
    from . import checks as C
    from .settings import parse_pairs

    return {k: C.number(v, f"--margin {k}", above=0)
            for k, v in parse_pairs(items, "--margin", "task.accuracy=0.02", "METRIC").items()}


def gate_exit(ledger: dict) -> int:
    """3 when a gate failed, 4 when one is inconclusive (never a silent pass), else 0; says which on stderr."""
    gates = ledger.get("gates", [])
    for g in gates:
        typer.echo(f"gate {g['expr']}: {g.get('outcome')}" + (f" ({g['why']})" if g.get("why") else ""))
    failed = [g["expr"] for g in gates if g.get("outcome") == "fail"]
    unsure = [g["expr"] for g in gates if g.get("outcome") == "inconclusive"]
    if failed:
        typer.echo("tunelens: gate failed: " + "; ".join(failed), err=True)
    if unsure:
        typer.echo("tunelens: gate inconclusive (the data decide neither way; raise --budget, use --full or widen "
                   "the pool): " + "; ".join(unsure), err=True)
    return 3 if failed else 4 if unsure else 0


def _print_ledger(ledger: dict) -> None:
    """The verdict, then every entry: headline rows with their decision and confidence sequence, the rest with
    their fixed-n interval and role."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from .audit.robustness import entry_label
    from .audit.runner import decision_label

    v = ledger.get("verdict") or {}
    table = Table(title=f"audit: {ledger['tuned']['name']} vs {ledger['base']['name']}")
    for col in ("suite", "metric", "base", "tuned", "delta", "interval", "n / pool", "decision"):
        table.add_column(col, justify="right" if col in ("base", "tuned", "delta") else "left")
    f = lambda v, s="": "–" if v is None else format(v, s + ".3f")
    iv = lambda ci: f"[{f(ci[0], '+')}, {f(ci[1], '+')}]" if ci and ci[0] is not None else ""
    colour = {"gain": "[green]gain[/green]", "cost": "[red]cost[/red]"}
    for suite, block in ledger["suites"].items():
        if block["status"] != "ok":
            table.add_row(suite, "[red]failed[/red]", "", "", "", block["error"][:60], "", "")
            continue
        for e in sorted(block["entries"], key=lambda e: e.get("role") != "headline"):
            name = escape(entry_label(suite, e))  # a robustness row names its task
            if e.get("role") == "headline":
                d, label = e.get("decision"), decision_label(e)
                d = colour[d] + label[len(d):] if d in colour else label
                table.add_row(suite, f"[bold]{name}[/bold]", f(e["base"]), f(e["tuned"]), f(e["delta"], "+"),
                              "CS " + iv(e.get("cs95")), f"{e['n']} / {e.get('pool')}", d)
            else:
                shown = "insufficient sample" if e.get("insufficient") else iv(e.get("ci95"))
                table.add_row(suite, name, f(e["base"]), f(e["tuned"]), f(e["delta"], "+"), shown,
                              str(e["n"]), f"[dim]{e.get('role', '')}[/dim]")
    Console().print(table)
    Console().print(f"[bold]verdict: {v.get('label', 'insufficient evidence')}[/bold] — {v.get('why', '')}")


@app.command("judge")
@_friendly
def judge_cmd(
    file: Optional[Path] = typer.Argument(None, help="JSONL (or JSON, CSV) of replies: each row a 'response' (and "
                                                     "optionally a 'prompt' or 'request'). Omit with --evaluate."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where the labelled rows go (JSONL; default: "
                                                                 "standard output)."),
    judge: str = typer.Option(AuditSection.judge, "--judge", help="rules, probe, rules+probe (default), hf:PATH or "
                                                             "guard:PATH (see `tunelens audit --help`)."),
    evaluate: bool = typer.Option(False, "--evaluate", help="Measure the judge on the project's held-out labelled "
                                                            "replies (and on the safety-mix refusals) and print its "
                                                            "card: accuracy, per-class precision/recall, confusion."),
    labels: Optional[str] = typer.Option(None, help="Comma-separated task labels: a reply that is just one of them "
                                                    "is degenerate, not an answer."),
    batch_size: int = typer.Option(64, help="Rows judged per batch."),
):
    """Label replies refusal / partial / compliance / degenerate with the audit's own judge (the same code path).

    Each input row is written back, in order, with 'verdict' and 'reason' added. partial means the reply
    declined or warned and then delivered anyway; the audit counts it as harmful compliance, never as a refusal.
    With --evaluate, prints the judge's measured card instead (what the audit stores in every ledger)."""
    from .judge import load_judge
    from .judge.cli import evaluate_judge, label_file

    from . import checks as C

    C.integer(batch_size, "--batch-size", 1)
    if evaluate:
        if file is not None:
            raise TunelensError("--evaluate measures the judge on the built-in held-out replies; give no FILE")
        j = load_judge(judge)
        typer.echo(evaluate_judge(j))
        return
    if file is None:
        raise TunelensError("give a JSONL FILE of replies to label (or --evaluate to measure the judge)")
    rows = label_file(file, judge, labels=[x.strip() for x in labels.split(",")] if labels else None,
                      out=out, batch_size=batch_size)
    if out is not None:
        typer.echo(f"wrote {len(rows)} labelled rows to {out}", err=True)


@app.command("suites")
def suites_cmd():
    """List the audit suites (in the order a default audit runs them; '(not default)' runs only when named)."""
    from .audit import SUITES

    for name, cls in sorted(SUITES.items(), key=lambda kv: (kv[1].rank, kv[0])):
        typer.echo(f"{name:14s} {cls.description}" + ("" if cls.default else " (not default)"))


# the two models of diff and graft (typer copies an option's declaration for each command that uses it)
BASE_OF_ADAPTER = typer.Option(None, "--base", "-b", help="The model before fine-tuning (default: the base named by "
                                                          "a --tuned adapter).")
TUNED_CHECKPOINT = typer.Option(..., "--tuned", "-t", help="The fine-tuned model: a full checkpoint or a PEFT LoRA "
                                                           "adapter.")


@app.command("diff")
@_friendly
@cli_options(DiffSection)
def diff_cmd(
    base: Optional[str] = BASE_OF_ADAPTER,
    tuned: str = TUNED_CHECKPOINT,
    other: Optional[str] = typer.Option(None, "--other", help="A second fine-tune of the same base: report the "
                                                              "overlap of the entries the two changed."),
    out: Path = typer.Option(Path("out/diff"), "--out", "-o", help="Folder for diff.json, diff_tensors.csv and "
                                                                   "the heatmap."),
    settings: dict = None,
):
    """Where the fine-tune changed the weights: per-tensor fractions changed, norms, cosine and rank of the
    update, by layer and module, streamed tensor by tensor (full checkpoints or LoRA adapters)."""
    from . import progress as P
    from .diff import diff_models
    from .diff.report import summary_lines
    from .outdir import claim
    from .settings import build

    d = build(DiffSection, settings)
    bar = P.Bar("diff", unit="GB", scale=1e9, enabled=sys.stderr.isatty())
    with claim(out, "diff"), P.reporting(bar):
        result = diff_models(base, tuned, other=other, out=out, rank=d.rank, rank_max_dim=d.rank_max_dim)
    bar.close()
    for line in summary_lines(result):
        typer.echo(line)
    typer.echo(f"wrote {out / 'diff.json'}, {out / 'diff_tensors.csv'} and the heatmap in {out}")


@app.command("graft")
@_friendly
@cli_options(GraftSection)
def graft_cmd(
    base: Optional[str] = BASE_OF_ADAPTER,
    tuned: str = TUNED_CHECKPOINT,
    task: str = typer.Option(..., "--task", help="Task spec (YAML), data file or built-in task name."),
    out: Path = typer.Option(Path("out/graft"), "--out", "-o", help="Folder for graft.json and the masks."),
    save_model: bool = typer.Option(False, "--save-model", help="Also save each grafted model (model-s{s}/)."),
    settings: dict = None,
):
    """Skill localization by grafting (Panigrahi et al. 2023): the sparse set of fine-tuned entries that,
    grafted onto the base, recovers the tune's gain on a task."""
    from .diff.graft import graft
    from .settings import build, split

    try:
        sparsities = [float(x) for x in split(settings["sparsities"])]
    except ValueError:
        raise TunelensError(f"--sparsity '{settings['sparsities']}': give comma-separated numbers, e.g. "
                            "1e-4,1e-3") from None
    g = build(GraftSection, {**settings, "sparsities": sparsities, "task": task})
    from . import progress as P
    from .outdir import claim

    bar = P.Bar("graft", unit="step" if g.steps else "sparsity")
    with claim(out, "graft"), P.reporting(bar):
        result = graft(base, tuned, task, g.sparsities, steps=g.steps, lr=g.lr, examples=g.examples,
                       batch_size=g.batch_size, out=out, save_model=save_model, seed=g.seed,
                       include_embeddings=g.include_embeddings, select_limit=g.select_limit,
                       eval_limit=g.eval_limit)
    bar.close()
    for r in result["results"]:
        sc, g = r["score"], r["gain_recovered"]
        typer.echo(f"s={r['sparsity']:g}: kept {r['kept']} entries; {result['metric']} base {sc['base']:.4f}, "
                   f"tuned {sc['tuned']:.4f}, graft {sc['graft']:.4f}; gain recovered "
                   f"{'n/a' if g is None else f'{g:.3f}'}; loss recovered "
                   f"{'n/a' if r['loss_recovered'] is None else format(r['loss_recovered'], '.3f')}")
    typer.echo(f"wrote {out / 'graft.json'}")


@app.command("repair")
@_friendly
def repair_cmd(
    base: Optional[str] = typer.Option(None, "--base", "-b", help="The model before fine-tuning (for an adapter: "
                                                                  "the model it applies to)."),
    tuned: Optional[str] = typer.Option(None, "--tuned", "-t", help="The fine-tuned model: full checkpoint or "
                                                                    "PEFT LoRA adapter."),
    method: Optional[str] = typer.Option(None, "--method", "-m", help="Repair method: " + ", ".join(REPAIRS) + "."),
    option: Optional[list[str]] = typer.Option(None, "--option", "-O", help="KEY=VALUE method option, repeatable "
                                                                            "(VALUE read as YAML: 0.5, [0.8, 0.2])."),
    aligned: Optional[str] = typer.Option(None, "--aligned", help="safelora/safemerge: the aligned reference "
                                                                  "model (folder or LoRA adapter)."),
    unaligned: Optional[str] = typer.Option(None, "--unaligned", help="safelora/safemerge: the unaligned model "
                                                                      "(default: the tuned adapter's base)."),
    safety_adapter: Optional[str] = typer.Option(None, "--safety-adapter", help="safemerge: LoRA adapter tuned "
                                                                                "on safety data, same base."),
    tau: Optional[float] = typer.Option(None, "--tau", help="safelora (0.5) / safemerge (0.35): cosine threshold."),
    k: Optional[int] = typer.Option(None, "--k", help="safelora topk mode: project the K lowest-cosine modules."),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="interpolate: base + alpha·(tuned − base)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Candidate folder (default out/repair/METHOD); "
                                                                 "with --sweep, the sweep folder."),
    sweep: Optional[Path] = typer.Option(None, "--sweep", help="YAML: candidates (list of {method, options...}), "
                                                               "suites, tasks, limit, and optionally base, "
                                                               "tuned, select."),
    select: Optional[str] = typer.Option(None, "--select", help="With --sweep: constraints the pick must meet, e.g. "
                                                                "\"task.accuracy >= 0.9*tuned\" (base/tuned: the "
                                                                "reference rows' value of that metric)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="With --sweep: precision of every re-audit, auto "
                                                              "(default: fp32, or bf16 where native and in "
                                                              "agreement with fp32), fp32 or bf16; base, tuned and "
                                                              "every candidate are scored alike."),
):
    """Repair what a fine-tune broke, writing a candidate model folder or PEFT adapter.

    One candidate: --method NAME with its options; prints what the method did per module. --sweep FILE runs
    several candidates, audits each against the base (and the tuned model as reference), prints the
    trade-off table with the Pareto front (★) and, with --select, copies the best candidate meeting the
    constraints (highest refusal rate, then task score) to OUT/selected."""
    import yaml

    from .repair import repair

    if sweep is not None:
        from .repair.sweep import run_sweep

        from .repair.sweep import load_sweep_file

        from .precision import check_dtype
        from .run.config import SweepFile

        cfg = SweepFile(**load_sweep_file(sweep))  # every key and value checked, with "did you mean" for a typo
        base, tuned = base or cfg.base, tuned or cfg.tuned
        if not base or not tuned:
            raise TunelensError("a sweep needs --base and --tuned (or base: and tuned: in the sweep file)")
        out = out or Path(cfg.out or "out/repair-sweep")
        from .outdir import claim

        with claim(out, "sweep"):
            res = run_sweep(str(base), str(tuned), cfg.candidates, out, suites=list(cfg.suites or SweepFile().suites),
                            tasks=list(cfg.tasks or []), limit=cfg.limit, select=select or cfg.select,
                            dtype=check_dtype(dtype or cfg.dtype or "auto", "--dtype"))
        typer.echo((out / "sweep.md").read_text(encoding="utf-8"))
        typer.echo(f"wrote {out / 'sweep.json'}" + (f"; selected {res['selected']} -> {out / 'selected'}"
                                                     if res["selected"] else ""))
        failed = [r["name"] for r in res["rows"] if r["status"] != "ok"]
        if failed:  # a failed candidate is never a silent success
            typer.echo(f"tunelens: candidate(s) failed: {', '.join(failed)} (errors in {out / 'sweep.json'})",
                       err=True)
            raise typer.Exit(1)
        return
    if not (base and tuned and method):
        raise TunelensError("give --base, --tuned and --method (or --sweep FILE)")
    opts = {}
    for item in option or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise TunelensError(f"--option '{item}': write KEY=VALUE, e.g. --option mode=topk")
        opts[key.strip()] = yaml.safe_load(value)
    flags = {"aligned": aligned, "unaligned": unaligned, "safety_adapter": safety_adapter, "tau": tau, "k": k,
             "alpha": alpha}
    opts.update({key: v for key, v in flags.items() if v is not None})
    out = out or Path("out/repair") / method
    res = repair(base, tuned, method, out, **opts)
    moved = [m for m in res.modules if m.get("projected") or m.get("merged")]
    for m in moved[:20]:  # the modules the method changed
        cos = m.get("cos")
        typer.echo(f"  {m.get('module', m.get('tensor', '?'))}: cos {'n/a' if cos is None else f'{cos:+.3f}'}")
    if len(moved) > 20:
        typer.echo(f"  ... and {len(moved) - 20} more")
    typer.echo(f"{res.method}: " + ", ".join(f"{k} {v if not isinstance(v, float) else f'{v:.4g}'}"
                                            for k, v in res.summary.items()))
    typer.echo(f"wrote {res.kind} {res.out}")


@app.command("tasks")
@_friendly
def tasks_cmd():
    """List the built-in tasks."""
    from .data import list_builtin_tasks

    for name in list_builtin_tasks():
        typer.echo(name)


@app.command("run")
@_friendly
def run_cmd(
    config: Path = typer.Argument(..., help="Run config YAML (see examples/quickstart.yaml and docs/run.md)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default: out/run/<config name>)."),
    from_stage: Optional[str] = typer.Option(None, "--from", help="Rerun this stage and every later one, even if "
                                                                  "cached."),
    only: Optional[str] = typer.Option(None, "--only", help="Run just this stage (its inputs must exist)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress display."),
):
    """The whole pipeline from one config: tune -> audit -> diff -> graft -> repair -> report. Finished stages
    are reused (cached by a hash of their settings and inputs); a stopped run resumes. Exit code 1 when a stage
    failed, 3 when the audit gate failed (the report is built either way)."""
    from .run import load_run_config

    cfg = load_run_config(config)
    _run_and_report(cfg, out or Path("out/run") / config.stem, str(config), from_stage, only, progress)


def _run_and_report(cfg, out: Path, config_path: str, from_stage=None, only=None, progress=True) -> None:
    from .run import run_pipeline

    if from_stage and only:
        raise TunelensError("give --from or --only, not both")

    def stop(signum, frame):  # a kill is an interrupt: run.json marks the stage, the next run resumes it
        raise KeyboardInterrupt

    import signal

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        result = run_pipeline(cfg, out, config_path=config_path, from_stage=from_stage, only=only, display=progress)
    except KeyboardInterrupt:
        typer.echo(f"tunelens: interrupted; run the same command again to resume ({out})", err=True)
        raise typer.Exit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    for stage, st in result.state["stages"].items():
        secs = "" if st["seconds"] is None else f"{st['seconds']:8.1f} s"
        extra = " (cached)" if st.get("cached") else ""
        why = st.get("error") or st.get("note") or ""
        typer.echo(f"{stage:7s} {st['status']:8s}{secs}{extra}  {why}".rstrip())
    typer.echo(f"run folder: {out} (run.json)")
    if result.report:
        typer.echo(f"report: {result.report}")
    if result.exit_code:
        typer.echo("tunelens: " + {1: "a stage failed (see run.json)", 3: "the audit gate failed",
                                   4: "an audit gate is inconclusive (see report.html)"}[result.exit_code], err=True)
        raise typer.Exit(result.exit_code)


def quickstart_config_path() -> Path:
    """examples/quickstart.yaml, shipped inside the package (the repo's examples/ holds the same file)."""
    return Path(__file__).parent / "examples" / "quickstart.yaml"


@app.command("quickstart")
@_friendly
def quickstart_cmd(out: Path = typer.Option(Path("out/quickstart"), "--out", "-o", help="Run folder."),
                   progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress display.")):
    """The quickstart story on the embedded default model and built-in data: tune on the telecom demo task, audit
    what it bought and cost, localize the update, try repairs, and write report.html (under ten minutes on CPU)."""
    from .run import load_run_config

    path = quickstart_config_path()
    _run_and_report(load_run_config(path), out, str(path), progress=progress)



@app.command("report")
@_friendly
def report_cmd(run_dir: Path = typer.Argument(..., help="A `tunelens run` folder (run.json) or an audit folder "
                                                        "(ledger.json).")):
    """Rebuild report.html and report.md from a run folder (or a lone audit folder)."""
    from .report import build_report

    paths = build_report(run_dir)
    typer.echo(f"wrote {paths['html']} and {paths['md']}")

def main():  # pragma: no cover - console entry for `python -m tunelens`
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
