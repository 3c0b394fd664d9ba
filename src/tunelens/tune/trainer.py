"""The tuning recipe, top to bottom: examples -> model (+ PEFT) -> transformers.Trainer -> saved outputs.

Trainer provides checkpointing (optimizer, scheduler, RNG, data position), logging integrations
(`report_to`) and multi-process training (`accelerate launch` / `torchrun`). Our speed comes from:
- length-grouped batches (Trainer's `group_by_length` sampler) padded on the *left*, so every row's
  completion sits at the end of the batch;
- logits computed only for the last K positions (`logits_to_keep`), K = longest completion + 1: the
  49k-word output layer never runs over prompt tokens;
- no gradient checkpointing and no per-step metrics over the vocabulary.
Left padding is exact for rotary-position models: attention depends on relative positions only.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer import TRAINING_ARGS_NAME

from .. import __version__
from ..errors import TunelensError
from ..io import write_json
from ..models.portable import make_portable, warn_unportable
from ..outdir import claim, put_back, set_aside
from ..precision import Choice, hardware, training_precision
from .attention import bf16_cpu_attention
from .. import progress as P
from ..progress import log
from ..settings import defaults
from .config import TuneConfig
from .examples import IGNORE, data_files, parse_mix
from .objectives import OBJECTIVES

CHECKPOINTS = "checkpoints"
MODEL_DIR = "model"


class CompletionCollator:
    """Left-pads a batch and tells the model how many trailing positions need logits."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: list[dict]) -> dict:
        length = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), length), self.pad_id, dtype=torch.long)
        labels = torch.full((len(features), length), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(features), length), dtype=torch.long)
        completion = 0
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, length - n :] = torch.tensor(f["input_ids"])
            labels[i, length - n :] = torch.tensor(f["labels"])
            mask[i, length - n :] = 1
            first = next(k for k, t in enumerate(f["labels"]) if t != IGNORE)
            completion = max(completion, n - first)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels,
                "logits_to_keep": min(completion + 1, length)}


def completion_loss(outputs, labels, num_items_in_batch=None):
    """Cross-entropy over the completion tokens from the last-K logits (see CompletionCollator)."""
    logits = outputs.logits  # [B, K, V]: positions L-K .. L-1; position p predicts token p+1
    k = logits.shape[1]
    targets = labels[:, labels.shape[1] - k + 1 :]
    loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE, reduction="sum")
    n = num_items_in_batch if num_items_in_batch is not None else (targets != IGNORE).sum()
    return loss / n


class AtomicCheckpoints:
    """Mixed into every objective's Trainer: writes each checkpoint into a staging folder and renames it into place
    when complete, so `checkpoints/checkpoint-N` exists only whole; a kill mid-save leaves just the hidden staging
    folder."""

    def _save_checkpoint(self, model, trial):
        final_root = Path(self.args.output_dir)
        staging = final_root.parent / ".staging"  # shared by all ranks: each writes its own RNG state into it
        distributed = self.args.parallel_mode.value == "distributed"
        if self.is_world_process_zero():
            shutil.rmtree(staging, ignore_errors=True)
        if distributed:
            torch.distributed.barrier()
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        self.args.output_dir = str(staging)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.output_dir, self.args.save_total_limit = str(final_root), limit
        if distributed:
            torch.distributed.barrier()  # every rank has finished writing
        if self.is_world_process_zero():
            for ckpt in staging.glob("checkpoint-*"):  # not what else a trainer leaves there (TRL's model card)
                target = final_root / ckpt.name
                if target.exists():
                    shutil.rmtree(target)
                os.replace(ckpt, target)
            shutil.rmtree(staging, ignore_errors=True)
            _rotate(final_root, limit)
        if distributed:
            torch.distributed.barrier()


class AtomicCheckpointTrainer(AtomicCheckpoints, Trainer):
    """transformers' Trainer with atomic checkpoints: the SFT and continued-pretraining trainer."""


def dpo_trainer_class():
    """TRL's DPOTrainer with atomic checkpoints (built on first use: importing trl costs seconds)."""
    global _DPO
    if _DPO is None:
        from trl import DPOTrainer

        class AtomicDPOTrainer(AtomicCheckpoints, DPOTrainer):
            pass

        _DPO = AtomicDPOTrainer
    return _DPO


_DPO = None


def _rotate(root: Path, limit: int | None) -> None:
    if not limit:
        return
    ckpts = sorted(root.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    for old in ckpts[:-limit]:
        shutil.rmtree(old, ignore_errors=True)


def last_checkpoint(out: Path, check: bool = False) -> Path | None:
    """The newest checkpoint; with `check`, the newest intact one (a damaged one is named and passed over: the
    one before resumes to the same result, since resuming is exact)."""
    ckpts = sorted((out / CHECKPOINTS).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    if not check:
        return ckpts[-1] if ckpts else None
    damaged = []
    for ckpt in reversed(ckpts):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            if damaged:
                log.warning(f"tunelens: warning: {'; '.join(damaged)}; resuming from {ckpt.name} instead")
            return ckpt
        damaged.append(f"{ckpt} is damaged ({problem})")
    if damaged:
        raise TunelensError(f"cannot resume: {'; '.join(damaged)}. Start again with --overwrite")
    return None


def checkpoint_problem(ckpt: Path) -> str | None:
    """What is wrong with a checkpoint folder, read without running any pickle: torch files are zip archives
    whose every member's CRC is checked, safetensors headers are parsed, JSON files are parsed."""
    import zipfile

    from safetensors import safe_open

    if not (ckpt / "trainer_state.json").is_file():
        return "no trainer_state.json"
    for f in sorted(ckpt.iterdir()):
        try:
            if f.suffix in (".pt", ".pth", ".bin"):
                if not zipfile.is_zipfile(f):
                    return f"{f.name} is not a torch archive"
                with zipfile.ZipFile(f) as z:
                    bad = z.testzip()
                if bad:
                    return f"{f.name}: member {bad} fails its CRC check"
            elif f.suffix == ".safetensors":
                with safe_open(str(f), framework="pt") as st:
                    st.keys()
            elif f.suffix == ".json":
                json.loads(f.read_text())
        except Exception as e:  # noqa: BLE001 - any failure to read is damage
            return f"{f.name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


class StepProgress(TrainerCallback):
    """Optimizer steps onto the progress channel (tunelens.progress), for whoever listens (the run display)."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            P.step(state.global_step, state.max_steps or None)


class JsonlLog(TrainerCallback):
    """train_log.jsonl: one line per logging step with loss, learning rate and real tokens/s.

    Tokens come from Trainer's own non-padding count (summed over ranks, counted when a batch is
    used rather than when the loader prefetches it, and restored on resume)."""

    def __init__(self, path: Path, resume_step: int = 0):
        self.path = path
        self.t0, self.tok0 = time.perf_counter(), 0
        if path.exists() and _rank() == 0:  # drop what a killed or abandoned run logged after its checkpoint
            keep = [l for l in path.read_text().splitlines() if l and json.loads(l).get("step", 0) <= resume_step]
            path.write_text("".join(l + "\n" for l in keep))

    def on_train_begin(self, args, state, control, **kwargs):
        self.t0, self.tok0 = time.perf_counter(), state.num_input_tokens_seen

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        now, tok = time.perf_counter(), state.num_input_tokens_seen
        row = {"step": state.global_step, "epoch": state.epoch, "loss": logs["loss"],
               "learning_rate": logs.get("learning_rate"), "tokens_per_second": (tok - self.tok0) / (now - self.t0),
               "real_tokens": tok}
        self.t0, self.tok0 = now, tok
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _method(cfg: TuneConfig):
    from .methods import TUNING_METHODS

    return TUNING_METHODS[cfg.method]()


_NOT_THE_RUN = ("resume", "overwrite", "progress", "out")  # settings that do not change what is trained


def _prepare_out(cfg: TuneConfig, out: Path, files: dict[str, str]) -> Path | None:
    """Refuse to mix two different runs in one folder (a different config, or changed data on resume).

    With --overwrite the earlier run is not deleted but moved aside (returned): the caller deletes it once the new
    run has saved its model, and puts it back if the new run fails, so a bad setting never costs the old run."""
    run_json = out / "run.json"
    if not run_json.exists():
        return None
    try:
        run = json.loads(run_json.read_text())
    except ValueError as e:
        raise TunelensError(f"{run_json}: not valid JSON (line {e.lineno}, column {e.colno}); it is not a tuning "
                            "run tunelens can resume or replace: choose another --out") from None
    previous = run.get("config", {})
    now = cfg.to_dict()
    previous = {**defaults(TuneConfig), **previous}  # a run from before a setting existed had its default
    same = {k: v for k, v in previous.items() if k not in _NOT_THE_RUN} == \
           {k: v for k, v in now.items() if k not in _NOT_THE_RUN}
    if cfg.overwrite:
        return set_aside(out, f".{out.name}.replaced-", beside=True) if _rank() == 0 else None
    elif not same:
        raise TunelensError(f"{out} already holds a different tuning run; choose another --out or pass --overwrite")
    elif not cfg.resume and (out / MODEL_DIR).exists():
        raise TunelensError(f"{out} already holds this finished run; pass --overwrite to tune again")
    elif cfg.resume and run.get("data_files") and run["data_files"] != files:
        raise TunelensError(f"the training data changed since {out} was started; cannot resume "
                            "(pass --overwrite to start again)")
    return None




def _check_saved_weights(folder: Path) -> None:
    """Stop with the fix when the final save holds no weights, instead of renaming a folder that diff, repair and
    eval cannot load. That happens when the sharded weights were not gathered: FSDP with a sharded state dict
    (Trainer then saves nothing) or DeepSpeed ZeRO-3 without 16-bit gathering (Trainer writes a DeepSpeed
    checkpoint and an empty state dict)."""
    from safetensors import safe_open

    for f in folder.glob("*.safetensors") if folder.is_dir() else ():
        with safe_open(str(f), framework="pt") as st:
            if list(st.keys()):
                return
    raise TunelensError(f"the final save in {folder} holds no weights: under FSDP set fsdp_state_dict_type: "
                        "FULL_STATE_DICT, under DeepSpeed ZeRO-3 set zero3_save_16bit_model: true "
                        "(examples/accelerate/ has both)")


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"tunelens": __version__}
    for pkg in ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "safetensors"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def tune(cfg: TuneConfig) -> Path:
    """Run the recipe; returns the folder holding the final adapter or model (`<out>/model`).

    The output folder is claimed first (a tuning run's folder or a new one, writable, no other writer); with
    --overwrite the earlier run is restored if this one fails."""
    from ..data import load_items

    out = Path(cfg.out)
    tasks = list(cfg.data) + [t for t, _ in parse_mix(cfg.mix)]
    files = data_files(tasks)
    for t in tasks:  # a bad row or template field is named now, not after the model has loaded
        load_items(t, cfg.split)
    with claim(out, "tune"):
        aside = _prepare_out(cfg, out, files)
        try:
            final = _tune(cfg, out, files)
        except BaseException:
            if aside is not None:
                put_back(out, aside, everything=True)
                log.warning(f"tunelens: the new run failed; the earlier run in {out} is restored")
            raise
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
        return final


def _training_args(cfg: TuneConfig, out: Path, precision) -> dict:
    """The TrainingArguments keywords every objective shares (an objective adds its own and picks the class:
    TrainingArguments, or TRL's DPOConfig). `bf16` is always explicit: TRL's configs default to bf16, which
    CPUs without AVX512-BF16/AMX emulate at a fraction of fp32's speed."""
    return dict(
        bf16=precision.chosen == "bf16",  # autocast: weights, gradients and optimizer state stay fp32
        output_dir=str(out / CHECKPOINTS),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        optim=cfg.optim,
        warmup_steps=cfg.warmup_ratio,
        lr_scheduler_type=cfg.lr_scheduler,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        report_to=cfg.report_to or "none",
        seed=cfg.seed,
        data_seed=cfg.seed,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available() else None,
        disable_tqdm=not cfg.progress,
        include_num_input_tokens_seen="non_padding",
    )


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _tune(cfg: TuneConfig, out: Path, files: dict[str, str]) -> Path:
    from peft import get_peft_model

    from ..models import resolve_model

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)

    handle = resolve_model(cfg.model)
    tok = handle.tokenizer
    objective = OBJECTIVES[cfg.objective]()
    rows, stats = objective.examples(cfg, tok)
    if stats.truncated:
        log.warning(f"tunelens: {stats.truncated} of {len(rows)} examples were longer than max_length={cfg.max_length} "
                    "and were truncated (prompt cut from the left)")
    model = handle.model
    model.config.use_cache = False
    method = _method(cfg)
    peft_cfg = method.peft_config(cfg)
    if peft_cfg is not None:
        model = get_peft_model(model, peft_cfg)
    model = method.prepare(model, cfg)
    model.train()

    resume_from = last_checkpoint(out, check=True) if cfg.resume else None
    if objective.unit == "pair" and cfg.dtype == "auto" and hardware().native:
        # the calibration times SFT-shaped batches; a preference objective's rows are TRL's to collate
        precision = Choice("auto", "fp32", "auto: native bf16, but preference objectives are not calibrated: fp32 "
                                           "(--dtype bf16 to use it)", hardware().describe())
    else:
        precision = training_precision(cfg.dtype, model, rows, cfg.batch_size, CompletionCollator(pad_id(tok)),
                                       completion_loss, cfg.method)
    if _rank() == 0:
        write_json(out / "run.json", {
            "config": cfg.to_dict(), "seed": cfg.seed, "versions": _versions(), "data_files": files,
            "examples": {"n": len(rows), "sources": stats.sources, "truncated": stats.truncated,
                         "tokens": stats.total_tokens, "completion_tokens": stats.completion_tokens,
                         **({"documents": stats.documents, "too_short": stats.too_short}
                            if cfg.objective == "cpt" else {})},
            "model": {"name": handle.name, "kind": handle.kind, "path": str(handle.path) if handle.path else None},
            "precision": precision.record(), "status": "running",
        })

    callbacks = [JsonlLog(out / "train_log.jsonl", resume_step=int(resume_from.name.split("-")[-1]) if resume_from
                          else 0), StepProgress()]
    trainer = objective.trainer(cfg, model=model, tokenizer=tok, rows=rows, args=_training_args(cfg, out, precision),
                                callbacks=callbacks)
    with bf16_cpu_attention(model, precision.chosen):
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

    final = out / MODEL_DIR
    staging = out / f".{MODEL_DIR}.tmp"
    if trainer.is_world_process_zero():
        shutil.rmtree(staging, ignore_errors=True)
    # Every rank calls save_model: under FSDP (full state dict) and DeepSpeed ZeRO-3 the weights are sharded, and
    # save_model gathers them (a collective) before the main process alone writes one whole model or adapter.
    # One process and DDP get the plain save_pretrained.
    trainer.save_model(str(staging))
    if trainer.is_world_process_zero():
        _check_saved_weights(staging)
        (staging / TRAINING_ARGS_NAME).unlink(missing_ok=True)  # a pickle of the arguments; run.json has them
        tok.save_pretrained(staging)
        warn_unportable(make_portable(staging))
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        run = json.loads((out / "run.json").read_text())
        run.update(status="finished", train={"global_step": result.global_step,
                                              "train_loss": result.training_loss, **result.metrics})
        if hasattr(trainer, "compat_summary"):  # flip-aware SFT: what the distillation held to the base
            run["compat"] = trainer.compat_summary()
        write_json(out / "run.json", run)
    return final
