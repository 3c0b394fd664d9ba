"""The `tunelens` command line: a thin layer over the Python API."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from .errors import TunelensError
from .tune.config import DEFAULT_LR, METHODS, TuneConfig  # plain data (the trainer loads on first use)
# the repair registry with its plug-ins, for the --method help (typer builds every option's help text on each
# invocation, so a lazy one would cost the same import)
from .repair import REPAIRS


def _default(cls, name: str, fmt: str = "default {}") -> str:
    """A setting's default as its help text says it, read from the settings class (never written twice)."""
    import dataclasses

    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return fmt.format(f"{value:g}" if isinstance(value, float) else value)

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
def eval_cmd(
    model: str = typer.Option("default", "--model", "-m",
                              help="'default' (embedded SmolLM2-135M-Instruct), an HF folder, a PEFT adapter folder, "
                                   "a .gguf file or a hub id."),
    task: str = typer.Option(..., "--task", "-t", help="Task spec YAML, a data file, or a built-in task name "
                                                       "(see `tunelens tasks`)."),
    split: Optional[str] = typer.Option(None, help="Split to evaluate (default: the spec's eval_split)."),
    out: Path = typer.Option(Path("out/eval"), "--out", "-o", help="Folder for results.json and items.jsonl."),
    limit: Optional[int] = typer.Option(None, help="Evaluate N items: the first N of the split's stratified, seeded order "
                                                   "(every label in proportion), not the file's first rows."),
    fewshot: Optional[int] = typer.Option(None, help="Override the spec's few-shot k."),
    base: Optional[str] = typer.Option(None, help="Base model for a PEFT adapter (default: from adapter_config)."),
    token_budget: int = typer.Option(4096, help="Max padded tokens per log-likelihood batch."),
    batch_size: int = typer.Option(16, help="Batch size for generation."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow loading .bin/pickle checkpoints "
                                                                    "(they can run code)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Run model code shipped with the "
                                                                              "checkpoint."),
    seed: int = typer.Option(0, help="Seed for few-shot sampling and bootstrap intervals."),
):
    """Evaluate a model on a task: writes results.json and items.jsonl, prints a metrics table."""
    from .data import load_task
    from .evaluate import evaluate
    from .models import resolve_model
    from .outdir import claim

    from . import checks as C
    from .data import load_items

    C.integer(limit, "--limit", 1, null=True)
    C.integer(fewshot, "--fewshot", 0, null=True)
    C.integer(batch_size, "--batch-size", 1)
    C.integer(token_budget, "--token-budget", 64)  # below a prompt's length every batch holds one item: slow
    spec = load_task(task)
    if fewshot is not None:
        spec.fewshot = fewshot
    load_items(spec, split or spec.eval_split)  # every bad row or template field is named before the model loads
    with claim(out, "eval"):  # checked (ours, writable, free) before the model loads and the items are scored
        handle = resolve_model(model, base=base, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                               merge_adapter="auto")
        result = evaluate(handle, spec, split=split, limit=limit, token_budget=token_budget,
                          batch_size=batch_size, seed=seed)
        result.save(out)
    _print_metrics(result)
    typer.echo(f"wrote {out / 'results.json'} and {out / 'items.jsonl'}")


@app.command("tune")
@_friendly
def tune_cmd(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML with any of the settings below; "
                                                                      "flags given on the command line win."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model to tune (default: the embedded model)."),
    data: Optional[list[str]] = typer.Option(None, "--data", "-d", help="Task spec, data file or built-in task; "
                                                                        "repeat for several (all items used)."),
    mix: Optional[list[str]] = typer.Option(None, "--mix", help="TASK:WEIGHT, repeatable: sample tasks to these "
                                                                "weights (a multi-task cocktail)."),
    replay: Optional[float] = typer.Option(None, help="Fraction of general-instruction replay examples (0-1)."),
    safety_mix: Optional[float] = typer.Option(None, "--safety-mix", help="Fraction of built-in safety refusals "
                                                                          "blended in (SafeInstruct), e.g. 0.03."),
    method: Optional[str] = typer.Option(None, help=" | ".join(m + (" (default)" if m == "lora" else "")
                                                                for m in METHODS) + " (tune/methods/)."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help=f"Run folder ({_default(TuneConfig, 'out')})."),
    epochs: Optional[float] = typer.Option(None, help=f"Epochs over the training set ({_default(TuneConfig, 'epochs')})."),
    max_steps: Optional[int] = typer.Option(None, help="Stop after this many optimizer steps."),
    batch_size: Optional[int] = typer.Option(None, help=f"Examples per device per step ({_default(TuneConfig, 'batch_size')})."),
    learning_rate: Optional[float] = typer.Option(None, "--lr", help="Default by method: " + ", ".join(
        f"{v:g} {k}" for k, v in DEFAULT_LR.items()) + "."),
    optim: Optional[str] = typer.Option(None, help=f"Optimizer, any transformers name ({_default(TuneConfig, 'optim')}; "
                                                    "sgd, adafactor, ...)."),
    lora_r: Optional[int] = typer.Option(None, help=f"LoRA rank ({_default(TuneConfig, 'lora_r')})."),
    lora_alpha: Optional[int] = typer.Option(None, help=f"LoRA alpha ({_default(TuneConfig, 'lora_alpha')})."),
    max_length: Optional[int] = typer.Option(None, help="Longest example in tokens; longer ones are truncated "
                                                        f"and counted ({_default(TuneConfig, 'max_length')})."),
    max_examples: Optional[int] = typer.Option(None, help="Cap the training set (quick runs)."),
    save_steps: Optional[int] = typer.Option(None, help=f"Checkpoint every N steps ({_default(TuneConfig, 'save_steps')})."),
    seed: Optional[int] = typer.Option(None, help=f"Seed for sampling, shuffling and initialisation ({_default(TuneConfig, 'seed')})."),
    packing: bool = typer.Option(False, "--packing", help="Padding-free packing (GPU + flash attention only)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in --out."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a different run already in --out."),
):
    """Fine-tune a model on task data (chat-formatted SFT, loss on the reply only); saves a PEFT adapter or a
    full model folder under OUT/model, plus train_log.jsonl and run.json."""
    from .tune import load_config, tune

    cfg = load_config(config, model=model, data=data or None, mix=mix or None, replay=replay, safety_mix=safety_mix,
                      method=method, out=out, epochs=epochs, max_steps=max_steps, batch_size=batch_size,
                      learning_rate=learning_rate, optim=optim, lora_r=lora_r, lora_alpha=lora_alpha,
                      max_length=max_length, max_examples=max_examples, save_steps=save_steps, seed=seed,
                      packing=packing or None, resume=resume or None, overwrite=overwrite or None)
    final = tune(cfg)
    typer.echo(f"wrote {final} (evaluate it with: tunelens eval --model {final} --task TASK)")


@app.command("curve")
@_friendly
def curve_cmd(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Tuning YAML (as for `tunelens tune`)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model to tune (default: embedded)."),
    data: Optional[list[str]] = typer.Option(None, "--data", "-d", help="Training task(s)."),
    fractions: str = typer.Option("0.1,0.25,0.5,1.0", help="Comma-separated fractions of the training set."),
    eval_task: Optional[str] = typer.Option(None, "--eval-task", help="Task to score (default: the first --data)."),
    metric: str = typer.Option("accuracy", help="Metric to fit."),
    target: Optional[float] = typer.Option(None, help="Report the examples needed to reach this score."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Folder for the runs and curve.json."),
    max_steps: Optional[int] = typer.Option(None, help="Cap steps per run (quick looks)."),
    seed: Optional[int] = typer.Option(None, help="Seed."),
):
    """Learning curve: tune on growing fractions of the data, evaluate each on the validation split, fit a
    saturating power law, predict the score at 2x and 4x the data and the data needed for a target."""
    from .tune import load_config
    from .tune.curve import learning_curve

    try:
        fracs = [float(x) for x in fractions.split(",") if x.strip()]
    except ValueError:
        raise TunelensError(f"--fractions must be numbers separated by commas, got '{fractions}'") from None
    cfg = load_config(config, model=model, data=data or None, out=out or "out/curve", max_steps=max_steps, seed=seed)
    s = learning_curve(cfg, fracs, eval_task=eval_task, metric=metric, target=target)
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
def audit_cmd(
    base: str = typer.Option("default", "--base", "-b", help="The model before fine-tuning."),
    tuned: str = typer.Option(..., "--tuned", "-t", help="The fine-tuned model (folder, PEFT adapter, ...)."),
    task: Optional[list[str]] = typer.Option(None, "--task", help="Your task(s): spec YAML, data file or built-in."),
    suites: Optional[str] = typer.Option(None, help="Comma-separated suites (default: every default suite, "
                                                          "`tunelens suites` lists them)."),
    gate: Optional[list[str]] = typer.Option(None, "--gate", help="Condition that must hold, e.g. "
                                                                  "\"safety.refusal_rate.delta >= -0.05\"; repeatable. "
                                                                  "A headline delta is judged over its confidence "
                                                                  "sequence: pass (exit 0) when the condition holds "
                                                                  "for all of it, fail (exit 3) when for none, else "
                                                                  "inconclusive (exit 4)."),
    out: Path = typer.Option(Path("out/audit"), "--out", "-o", help="Folder for ledger.json, items/, summary.md."),
    limit: Optional[int] = typer.Option(None, help="Draw at most N items of each pool (the sequences stay about "
                                                   "the whole pool; a larger N uses the pool)."),
    budget: float = typer.Option(300.0, help="Seconds for the whole audit: suites stop drawing items when their "
                                             "share runs out, and what is undecided is inconclusive."),
    full: bool = typer.Option(False, "--full", help="Run every item of every pool (no sequential stopping)."),
    margin: Optional[list[str]] = typer.Option(None, "--margin", help="Equivalence margin of a headline metric, "
                                                                      "METRIC=VALUE (e.g. task.accuracy=0.02, or "
                                                                      f"refusal_rate=0.1); default 0.05; repeatable."),
    chunk: int = typer.Option(32, help="Items drawn between two looks of a sequential suite."),
    judge: str = typer.Option("rules+probe", "--judge", help="Who judges replies refusal / partial / compliance / "
                                                             "degenerate: rules, probe, rules+probe (rules for "
                                                             "degenerate text, a learned probe for the rest), "
                                                             "hf:PATH (a local sequence classifier) or guard:PATH (a "
                                                             "local guard LM). `tunelens judge --evaluate` measures "
                                                             "one."),
    seed: int = typer.Option(0, help="Seed of the item order and the bootstrap intervals."),
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
    from .audit import gate as G
    from .audit.base_store import attach
    from .data import load_task
    from .models import resolve_model

    if lm_eval:  # before minutes of loading models
        from .audit.lmeval_bridge import require_lm_eval

        require_lm_eval()
    from .outdir import claim

    from . import checks as C
    from .data import load_items

    C.integer(limit, "--limit", 1, null=True)
    C.integer(chunk, "--chunk", 1)
    C.number(budget, "--budget", above=0, null=True)
    margins = parse_margins(margin or [])
    specs = [load_task(t) for t in (task or [])]
    for spec in specs:  # bad rows and template fields are named before the models load
        load_items(spec, spec.eval_split)
    for g in gate or []:  # a malformed gate fails before models load and suites run
        G.validate(g)
    chosen = [s.strip() for s in suites.split(",")] if suites else None
    from .judge import load_judge

    load_judge(judge)  # a bad judge path fails before the models load
    with claim(out, "audit"):
        hb = resolve_model(base, allow_pickle=allow_pickle)
        ht = resolve_model(tuned, allow_pickle=allow_pickle, merge_adapter="auto")  # merged: same outputs, faster
        check_tokenizers(hb, ht, allow_tokenizer_mismatch)
        ctx = AuditContext(base=hb, tuned=ht, tasks=specs, limit=limit, seed=seed, sequential=not full,
                           budget=budget, chunk=chunk, margins=margins, judge=judge)
        for t in lm_eval or []:
            from .audit.lmeval_bridge import add_lm_eval_task

            add_lm_eval_task(ctx, t, lm_eval_include)
        store = attach(ctx, False if no_base_cache else base_cache or True)
        ledger = run_audit(ctx, chosen, out, gate)
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


def parse_margins(items: list[str]) -> dict[str, float]:
    """--margin METRIC=VALUE, each a number > 0."""
    from . import checks as C
    from .errors import TunelensError

    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or not name.strip() or number is None:
            raise TunelensError(f"--margin '{item}': write METRIC=VALUE, e.g. --margin task.accuracy=0.02")
        out[name.strip()] = C.number(number, f"--margin {name.strip()}", above=0)
    return out


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
    judge: str = typer.Option("rules+probe", "--judge", help="rules, probe, rules+probe (default), hf:PATH or "
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


@app.command("diff")
@_friendly
def diff_cmd(
    base: Optional[str] = typer.Option(None, "--base", "-b", help="The model before fine-tuning (default: the "
                                                                  "base named by a --tuned adapter)."),
    tuned: str = typer.Option(..., "--tuned", "-t", help="The fine-tuned model: a full checkpoint or a PEFT "
                                                         "LoRA adapter."),
    other: Optional[str] = typer.Option(None, "--other", help="A second fine-tune of the same base: report the "
                                                              "overlap of the entries the two changed."),
    out: Path = typer.Option(Path("out/diff"), "--out", "-o", help="Folder for diff.json, diff_tensors.csv and "
                                                                   "the heatmap."),
    rank: bool = typer.Option(True, "--rank/--no-rank", help="Singular values of every 2-D update (numerical "
                                                             "rank, energy ranks); the slow part."),
    rank_max_dim: Optional[int] = typer.Option(None, "--rank-max-dim", help="Skip the rank of matrices whose "
                                                                            "smaller side exceeds this."),
):
    """Where the fine-tune changed the weights: per-tensor fractions changed, norms, cosine and rank of the
    update, by layer and module, streamed tensor by tensor (full checkpoints or LoRA adapters)."""
    from .diff import diff_models
    from .diff.report import summary_lines

    shown = {"pct": -1}

    def progress(done: int, total: int) -> None:
        pct = int(100 * done / total) if total else 100
        if sys.stderr.isatty() and pct // 5 != shown["pct"] // 5:
            shown["pct"] = pct
            typer.echo(f"\rdiff: {pct:3d}% of {total / 1e9:.2f} GB", err=True, nl=False)

    from .outdir import claim

    with claim(out, "diff"):
        result = diff_models(base, tuned, other=other, out=out, rank=rank, rank_max_dim=rank_max_dim,
                             progress=progress)
    if shown["pct"] >= 0:
        typer.echo("", err=True)
    for line in summary_lines(result):
        typer.echo(line)
    typer.echo(f"wrote {out / 'diff.json'}, {out / 'diff_tensors.csv'} and the heatmap in {out}")


@app.command("graft")
@_friendly
def graft_cmd(
    base: Optional[str] = typer.Option(None, "--base", "-b", help="The model before fine-tuning (default: the "
                                                                  "base named by a --tuned adapter)."),
    tuned: str = typer.Option(..., "--tuned", "-t", help="The fine-tuned model: a full checkpoint or a PEFT "
                                                         "LoRA adapter (merged)."),
    task: str = typer.Option(..., "--task", help="Task spec (YAML), data file or built-in task name."),
    sparsity: str = typer.Option("1e-4,1e-3,1e-2", "--sparsity", "-s", help="Comma-separated fractions of the "
                                                                            "eligible entries to graft."),
    steps: int = typer.Option(20, "--steps", help="Mask optimisation steps (0: top-|Δ| mask only)."),
    lr: float = typer.Option(1e7, "--lr", help="Step size on the mask logits S (σ'(S-10) ≈ 4.5e-5)."),
    examples: int = typer.Option(256, "--examples", help="Train examples in the pool the loss is computed on."),
    batch_size: int = typer.Option(16, "--batch-size", help="Examples per step, drawn from the pool (the whole "
                                                            "pool when it is smaller)."),
    select_limit: int = typer.Option(64, "--select-limit", help="Items of train and of validation scoring "
                                                                "the rounded mask after each step."),
    eval_limit: Optional[int] = typer.Option(None, "--limit", help="Items of the eval split for the reported "
                                                                   "scores (default: all)."),
    include_embeddings: bool = typer.Option(False, "--include-embeddings", help="Let the mask include the "
                                                                                "embedding matrices."),
    seed: int = typer.Option(0, "--seed", help="Seed of S and of the example batch."),
    out: Path = typer.Option(Path("out/graft"), "--out", "-o", help="Folder for graft.json and the masks."),
    save_model: bool = typer.Option(False, "--save-model", help="Also save each grafted model (model-s{s}/)."),
):
    """Skill localization by grafting (Panigrahi et al. 2023): the sparse set of fine-tuned entries that,
    grafted onto the base, recovers the tune's gain on a task."""
    from .diff.graft import graft

    try:
        sparsities = [float(x) for x in sparsity.split(",") if x.strip()]
    except ValueError:
        raise TunelensError(f"--sparsity '{sparsity}': give comma-separated numbers, e.g. 1e-4,1e-3") from None
    from tqdm.auto import tqdm

    bar = tqdm(total=len(sparsities) * steps, desc="graft steps", unit="step", disable=not steps)

    def progress(done: int, total: int) -> None:
        bar.update(done - bar.n)

    from .outdir import claim

    with claim(out, "graft"):
        result = graft(base, tuned, task, sparsities, steps=steps, lr=lr, examples=examples, batch_size=batch_size,
                       out=out, save_model=save_model, seed=seed, include_embeddings=include_embeddings,
                       select_limit=select_limit, eval_limit=eval_limit, progress=progress)
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

        cfg = load_sweep_file(sweep)  # every key and value checked, with "did you mean" for a typo
        base, tuned = base or cfg.get("base"), tuned or cfg.get("tuned")
        if not base or not tuned:
            raise TunelensError("a sweep needs --base and --tuned (or base: and tuned: in the sweep file)")
        out = out or Path(cfg.get("out") or "out/repair-sweep")
        from .outdir import claim

        with claim(out, "sweep"):
            res = run_sweep(str(base), str(tuned), cfg.get("candidates") or [], out,
                            suites=list(cfg.get("suites") or ["task", "safety", "over_refusal"]),
                            tasks=list(cfg.get("tasks") or []), limit=cfg.get("limit"),
                            select=select or cfg.get("select"))
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
