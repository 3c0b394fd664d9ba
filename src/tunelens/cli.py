"""The `tunelens` command line: a thin layer over the Python API."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from .errors import TunelensError

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
    """User errors become one line on stderr and exit code 2; --debug shows the traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TunelensError as e:
            if _state["debug"]:
                raise
            typer.echo(f"tunelens: error: {e}", err=True)
            raise typer.Exit(e.exit_code)

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
    limit: Optional[int] = typer.Option(None, help="Evaluate only the first N items."),
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

    spec = load_task(task)
    if fewshot is not None:
        spec.fewshot = fewshot
    handle = resolve_model(model, base=base, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    result = evaluate(handle, spec, split=split, limit=limit, token_budget=token_budget, batch_size=batch_size,
                      seed=seed)
    result.save(out)
    _print_metrics(result)
    typer.echo(f"wrote {out / 'results.json'} and {out / 'items.jsonl'}")


@app.command("tasks")
@_friendly
def tasks_cmd():
    """List the built-in tasks."""
    from .data import list_builtin_tasks

    for name in list_builtin_tasks():
        typer.echo(name)


@app.command("quickstart")
@_friendly
def quickstart_cmd(out: Path = typer.Option(Path("out/quickstart"), "--out", "-o", help="Output folder.")):
    """Evaluate the embedded default model on the built-in telecom routing task (zero-shot)."""
    from .data import load_task
    from .evaluate import evaluate
    from .models import resolve_model

    handle = resolve_model("default")
    result = evaluate(handle, load_task("telecom-intent"))
    result.save(out)
    _print_metrics(result)
    typer.echo(f"wrote {out / 'results.json'} and {out / 'items.jsonl'}")


def main():  # pragma: no cover - console entry for `python -m tunelens`
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
