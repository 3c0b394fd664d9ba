"""Precision by hardware: fp32 everywhere unless bf16 is native here *and* pays for this model.

Training (`tunelens tune --dtype auto|fp32|bf16`):
- `auto` on hardware without native bf16 (a CPU lacking AVX512-BF16 and AMX, a GPU without bf16 support) is
  fp32, decided from the flags alone: no calibration, no cost, and the run's stage hash is today's.
- `auto` on native hardware times a few fp32 and bf16-autocast forward+backward steps of *this* model at the
  run's batch shape (`calibrate`) and picks bf16 only if it is at least MIN_SPEEDUP faster. The measurement is
  cached per machine as JSON under `$TUNELENS_HOME/precision/` (`calibration_key`: CPU/GPU name, the bf16-related
  flags, torch version, model architecture + trainable size, method, batch shape), written atomically.
- `fp32` / `bf16` are taken as asked; bf16 on hardware that emulates it costs one warning line.
bf16 training is autocast (weights, gradients and optimizer state stay fp32; matmuls run in bf16).

Audits (`tunelens audit --dtype auto|fp32|bf16`): bf16 means both models scored with their weights cast to
bf16 or, where only that agrees, under bf16 autocast over fp32 weights; it is used only after the probe-set check
(`audit_precision`) agrees with fp32 within AGREEMENT (docs/audit.md says why these thresholds). `auto` offers
bf16 only where it is native; base and tuned are always scored at the same precision, in the same mode.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import TunelensError

DTYPES = ("auto", "fp32", "bf16")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # either one: bf16 matmuls run natively on this CPU
SHOWN_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")
MIN_SPEEDUP = 1.1  # auto picks bf16 for training only when it measured at least this much faster than fp32
CALIBRATION_VERSION = 2  # 2: LoRA's bf16 path is tune/fastlora.py's (timings under 1 are stale)


@dataclass(frozen=True)
class Hardware:
    device: str  # "cpu" or "cuda"
    name: str  # the CPU's model name or the GPU's name
    flags: tuple[str, ...] = ()  # the SHOWN_FLAGS this CPU has
    native: bool = False  # bf16 runs natively

    def kind(self) -> str:
        """A short name of the bf16 capability: "avx2 only", "avx512_bf16 + amx_bf16", "cuda bf16"."""
        if self.device == "cuda":
            return f"cuda {'bf16' if self.native else 'without bf16'}"
        native = [f for f in BF16_FLAGS if f in self.flags]
        if native:
            return " + ".join(native)
        return "avx512 without bf16" if "avx512f" in self.flags else ("avx2 only" if "avx2" in self.flags
                                                                      else "no avx2")

    def describe(self) -> str:
        flags = " ".join(self.flags) or "none of " + " ".join(SHOWN_FLAGS)
        return (f"{self.name} [{flags}]: bf16 {'native' if self.native else 'emulated'} ({self.kind()})"
                if self.device == "cpu" else f"{self.name}: bf16 {'native' if self.native else 'not supported'}")


def cpu_bf16(cpuinfo: str | None = None) -> Hardware:
    """The CPU's bf16 capability from /proc/cpuinfo (or the text given); elsewhere (macOS, ...) not native."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    name, flags = platform.processor() or platform.machine() or "cpu", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and value.strip():
            name = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    shown = tuple(f for f in SHOWN_FLAGS if f in flags)
    return Hardware("cpu", name, shown, any(f in flags for f in BF16_FLAGS))


def hardware() -> Hardware:
    """Where training and scoring run: the first GPU when there is one, else the CPU."""
    import torch

    if torch.cuda.is_available():
        return Hardware("cuda", torch.cuda.get_device_name(0), (), bool(torch.cuda.is_bf16_supported()))
    return cpu_bf16()


def check_dtype(value, key: str = "dtype") -> str:
    from .checks import BadSetting

    if value not in DTYPES:
        from .errors import suggest

        raise BadSetting(key, f"{key} must be one of {', '.join(DTYPES)}, got {value!r}"
                         + suggest(str(value), DTYPES))
    return value


def emulated_warning(hw: Hardware, what: str) -> None:
    from .progress import log

    log.warning(f"tunelens: warning: {what} bf16 on {hw.name} ({hw.kind()}: no AVX512-BF16 or AMX): bf16 is "
                "emulated here and slow; fp32 is faster (--dtype auto picks fp32 on this machine)"
                if hw.device == "cpu" else
                f"tunelens: warning: {what} bf16 on {hw.name}, which does not support bf16 natively: slow or failing")


def planned(dtype: str, hw: Hardware | None = None) -> str:
    """What a setting resolves to before any measurement: "fp32", "bf16", or "auto-native" (measured later).
    The run pipeline hashes it: auto on non-native hardware is "fp32" and keeps the stage hashes as they were."""
    if dtype == "auto":
        return "auto-native" if (hw or hardware()).native else "fp32"
    return dtype


@dataclass
class Choice:
    requested: str
    chosen: str  # "fp32" or "bf16"
    why: str
    hardware: str = ""
    calibration: dict | None = None  # fp32_s, bf16_s (best seconds per step), speedup, shape, cached

    def record(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------- training


def calibration_key(hw: Hardware, model, shape: tuple[int, int], method: str) -> dict:
    """What a calibration measured: the machine, torch, the model's architecture and trainable size, the shape."""
    import torch

    cfg = getattr(model, "config", None)
    arch = {k: getattr(cfg, k, None) for k in ("model_type", "hidden_size", "num_hidden_layers",
                                               "intermediate_size", "num_attention_heads", "num_key_value_heads",
                                               "vocab_size")}
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"version": CALIBRATION_VERSION, "device": hw.device, "hardware": hw.name, "flags": list(hw.flags),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "arch": arch, "params": params,
            "trainable": trainable, "method": method, "shape": list(shape)}


def cache_dir() -> Path:
    from .models.common import tunelens_home

    return tunelens_home() / "precision"


def _cache_path(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"calibration-{digest}.json"


def cached_calibration(key: dict) -> dict | None:
    try:
        entry = json.loads(_cache_path(key).read_text())
    except (OSError, ValueError):
        return None
    return entry.get("result") if entry.get("key") == key else None


def store_calibration(key: dict, result: dict) -> Path:
    from .io import write_json

    path = _cache_path(key)
    try:
        write_json(path, {"key": key, "result": result, "measured": time.strftime("%Y-%m-%dT%H:%M:%S")})
    except OSError:  # a read-only home: the choice stands, the next run measures again
        pass
    return path


def time_steps(step, repeats: int = 3) -> dict:
    """Best seconds per call of step(bf16) for fp32 and bf16, each warmed up once, the two interleaved so a
    neighbour's load hits both alike."""
    step(False), step(True)
    best = {False: float("inf"), True: float("inf")}
    for _ in range(repeats):
        for bf16 in (False, True):
            t = time.perf_counter()
            step(bf16)
            best[bf16] = min(best[bf16], time.perf_counter() - t)
    return {"fp32_s": best[False], "bf16_s": best[True], "speedup": best[False] / best[True]}


def train_step_fn(model, batch: dict, loss_fn, device: str):
    """One forward + backward of `model` on `batch` (fp32, or under bf16 autocast), gradients dropped after."""
    import torch

    labels = batch["labels"]
    inputs = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in batch.items() if k != "labels"}
    labels = labels.to(device)

    def step(bf16: bool):
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            out = model(**inputs)
            loss = loss_fn(out, labels)
        loss.backward()
        model.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()

    return step


def choose_training(dtype: str, hw: Hardware, measure=None, key: dict | None = None) -> Choice:
    """The training precision. `measure()` -> time_steps' dict, called only for auto on native hardware when
    no calibration is cached under `key`."""
    check_dtype(dtype)
    if dtype == "fp32":
        return Choice(dtype, "fp32", "requested fp32", hw.describe())
    if dtype == "bf16":
        if not hw.native:
            emulated_warning(hw, "--dtype bf16:")
            return Choice(dtype, "bf16", f"requested bf16 (emulated on this hardware: {hw.kind()}; slow)",
                          hw.describe())
        return Choice(dtype, "bf16", f"requested bf16 (native: {hw.kind()})", hw.describe())
    if not hw.native:
        return Choice(dtype, "fp32", f"auto: no native bf16 ({hw.kind()})", hw.describe())
    result = cached_calibration(key) if key is not None else None
    cached = result is not None
    if result is None:
        if measure is None:  # a multi-process run: each rank measuring could choose differently
            return Choice(dtype, "fp32", f"auto: native bf16 ({hw.kind()}) but no calibration cached for this "
                                         "model and shape, and a multi-process run does not measure (every rank "
                                         "must choose alike): fp32; a single-process run of the same model and "
                                         "batch shape calibrates and caches", hw.describe())
        result = measure()
        if key is not None:
            store_calibration(key, result)
    calib = {**result, "cached": cached, "min_speedup": MIN_SPEEDUP,
             **({"shape": key["shape"], "file": str(_cache_path(key))} if key else {})}
    s = result["speedup"]
    if s >= MIN_SPEEDUP:
        return Choice(dtype, "bf16", f"auto: bf16 measured {s:.2f}x faster than fp32 ({hw.kind()})", hw.describe(),
                      calib)
    return Choice(dtype, "fp32", f"auto: bf16 measured {s:.2f}x the speed of fp32, below {MIN_SPEEDUP}x "
                                 f"({hw.kind()})", hw.describe(), calib)


def calibration_batch(rows: list[dict], batch_size: int, collate) -> dict:
    """The run's typical batch: the batch_size examples around the median length, collated as training does."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    mid = max(0, min(len(order) - batch_size, len(order) // 2 - batch_size // 2))
    return collate([rows[i] for i in order[mid: mid + batch_size]])


def training_precision(dtype: str, model, rows: list[dict], batch_size: int, collate, loss_fn,
                       method: str) -> Choice:
    """choose_training for a tuning run: calibrates (and caches) on the run's median-length batch when needed.
    The torch RNG state is restored after calibrating, so the run trains as it would have."""
    import torch

    hw = hardware()
    if dtype != "auto" or not hw.native:
        return choose_training(dtype, hw)
    batch = calibration_batch(rows, batch_size, collate)
    shape = tuple(batch["input_ids"].shape)
    key = calibration_key(hw, model, (shape[0], -(-shape[1] // 32) * 32), method)

    def measure():
        from .progress import log

        log.info(f"tunelens: timing fp32 vs bf16 on this machine for batch {shape[0]} x {shape[1]} (cached)")
        rng = torch.random.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if hw.device == "cuda" else None
        was = model.device if hasattr(model, "device") else None
        try:
            if hw.device == "cuda":
                model.to("cuda")
            from .tune.attention import bf16_cpu_attention

            with bf16_cpu_attention(model, "bf16"):  # as training will run it (fp32 steps: unchanged)
                return time_steps(train_step_fn(model, batch, loss_fn, hw.device))
        finally:
            torch.random.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
            if was is not None and hw.device == "cuda":
                model.to(was)

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return choose_training(dtype, hw, None if distributed else measure, key)


# ---------------------------------------------------------------------------------------------- audits

# bf16 scoring must agree with fp32 on the probe set within these (docs/audit.md, "Precision", says why)
AGREEMENT = {
    "mean_abs_dll": 0.02,  # mean over choices of |log p_bf16 - log p_fp32| / tokens (nats per token)
    "max_abs_dll": 0.15,  # the largest per-token |delta| of one choice (nats per token)
    "argmax_agreement": 0.96,  # share of questions whose best choice is the same (32 probes: at most one flips)
    "greedy_agreement": 0.95,  # share of positions along fp32's greedy continuations (teacher-forced) where the
                               # bf16 argmax token is fp32's
}
PROBE_TASK, PROBE_ITEMS, PROBE_PROMPTS, PROBE_TOKENS = "general-knowledge", 32, 8, 24


def probe_set(tokenizer) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """The fixed probe set: PROBE_ITEMS multiple-choice questions of the built-in general-knowledge task's test
    split (evenly spaced in id order, the same on every machine), rendered as the audit renders them, and the
    first PROBE_PROMPTS of them as greedy prompts."""
    from .data import continuations, load_items, load_task, render_prompt

    spec = load_task(PROBE_TASK)
    items = sorted(load_items(spec, "test"), key=lambda it: str(it.id))
    step = max(1, len(items) // PROBE_ITEMS)
    items = items[::step][:PROBE_ITEMS]
    requests = [(render_prompt(spec, it, tokenizer), continuations(spec, it)) for it in items]
    return requests, [ctx for ctx, _ in requests[:PROBE_PROMPTS]]


def probe_scores(handle, greedy: list[list[int]] | None = None) -> dict:
    """The probe set scored by `handle` as it stands: per-choice (log-likelihood, tokens), and the argmax token at
    each position of the greedy continuations, teacher-forced (so one early difference does not make every later
    token differ). `greedy`: the continuations to force (default: this model's own greedy ones, generated)."""
    import torch

    from .scoring import encode, generate, loglikelihood

    model, tok = handle.model, handle.tokenizer
    requests, prompts = probe_set(tok)
    scores = loglikelihood(model, tok, requests, progress=False, desc="precision probe")
    if greedy is None:
        gens = generate(model, tok, prompts, max_new_tokens=PROBE_TOKENS, progress=False, desc="precision probe")
        greedy = [list(g.tokens) for g in gens]
    device = next(model.parameters()).device
    argmax = []
    with torch.no_grad():
        for prompt, toks in zip(prompts, greedy):
            ids = encode(tok, prompt)
            if not toks:
                argmax.append([])
                continue
            logits = model(input_ids=torch.tensor([ids + toks], device=device), use_cache=False).logits
            argmax.append(logits[0, len(ids) - 1: len(ids) + len(toks) - 1].argmax(-1).tolist())
    return {"ll": [[(c.logprob, max(1, len(c.tokens))) for c in q] for q in scores], "greedy": greedy,
            "argmax": argmax}


def compare(fp32: dict, bf16: dict) -> dict:
    """The agreement figures of two probe_scores results (bf16's forced along fp32's greedy continuations)."""
    diffs, agree, same, n_tokens = [], 0, 0, 0
    for q32, q16 in zip(fp32["ll"], bf16["ll"]):
        diffs += [abs(a - b) / n for (a, n), (b, _) in zip(q32, q16)]
        agree += max(range(len(q32)), key=lambda i: q32[i][0]) == max(range(len(q16)), key=lambda i: q16[i][0])
    for a32, a16 in zip(fp32["argmax"], bf16["argmax"]):
        n_tokens += len(a32)
        same += sum(a == b for a, b in zip(a32, a16))
    return {"mean_abs_dll": sum(diffs) / max(1, len(diffs)), "max_abs_dll": max(diffs, default=0.0),
            "argmax_agreement": agree / max(1, len(fp32["ll"])),
            "greedy_agreement": same / n_tokens if n_tokens else 1.0,
            "questions": len(fp32["ll"]), "choices": len(diffs), "greedy_tokens": n_tokens}


def passes(figures: dict) -> list[str]:
    """The thresholds a comparison misses (empty: it agrees)."""
    miss = []
    for k in ("mean_abs_dll", "max_abs_dll"):
        if figures[k] > AGREEMENT[k]:
            miss.append(f"{k} {figures[k]:.4f} > {AGREEMENT[k]}")
    for k in ("argmax_agreement", "greedy_agreement"):
        if figures[k] < AGREEMENT[k]:
            miss.append(f"{k} {figures[k]:.3f} < {AGREEMENT[k]}")
    return miss


BF16_MODES = ("weights", "autocast")  # the cheaper first: weights cast to bf16; else fp32 weights, bf16 matmuls


def bf16_agreement(handle, mode: str = "weights", ref: dict | None = None) -> dict:
    """Score the probe set in fp32 (or take `ref`), switch the model to bf16 scoring in `mode` in place
    (`to_bf16`), score it again: compare's figures."""
    ref = ref or probe_scores(handle)
    to_bf16(handle, mode)
    return compare(ref, probe_scores(handle, ref["greedy"]))


def to_bf16(handle, mode: str = "weights") -> None:
    """bf16 scoring of a loaded model, in place. "weights": every weight cast to bf16 (half the memory and its
    traffic; the residual stream and norms in bf16 too). "autocast": the weights stay fp32 and each forward runs
    under bf16 autocast (the matrix products in bf16, norms, softmax and the residual stream in fp32), its logits
    returned in fp32. Undo "autocast" with `to_fp32`; "weights" cannot be undone (reload the model)."""
    import torch

    model = handle.model
    if mode == "weights":
        model.to(torch.bfloat16)
        return
    if mode != "autocast":
        raise ValueError(f"bf16 mode must be one of {', '.join(BF16_MODES)}, got {mode!r}")
    from .scoring import _split_head

    device = next(model.parameters()).device.type
    # the scorer calls the model, or its backbone and output layer separately (last-position logits): all three
    split = _split_head(model)
    for module in [model] + (list(split) if split else []):
        _autocast_forward(module, device)


def _autocast_forward(module, device: str) -> None:
    import functools

    import torch

    if "_tunelens_fp32_forward" in module.__dict__:
        return
    inner = module.forward

    @functools.wraps(inner)
    def forward(*args, **kwargs):
        with torch.autocast(device, dtype=torch.bfloat16):
            out = inner(*args, **kwargs)
        if isinstance(out, torch.Tensor):  # the output layer: logits in fp32, as the scorer's softmax expects
            return out.float() if out.dtype == torch.bfloat16 else out
        logits = getattr(out, "logits", None)
        if logits is not None and logits.dtype == torch.bfloat16:
            out.logits = logits.float()
        return out

    module._tunelens_fp32_forward = inner
    module.forward = forward


def to_fp32(handle) -> None:
    """Undo to_bf16(handle, "autocast")."""
    for module in handle.model.modules():
        inner = module.__dict__.pop("_tunelens_fp32_forward", None)
        if inner is not None:
            del module.forward  # the instance attribute: the class's forward again


def audit_precision(dtype: str, handles: list, reload=None, hw: Hardware | None = None) -> tuple[list, dict]:
    """The precision an audit scores at, the same for every handle: (handles, ledger record).

    fp32 (or auto where bf16 is not native): the handles as loaded. bf16 (asked for, or auto where native): each
    model is scored on the probe set in fp32 and in bf16 autocast, and, when every model agrees there, with its
    weights cast to bf16 (cheaper still). bf16 stands in the cheapest mode in which every model agrees within
    AGREEMENT (`mode` in the record). When none does, auto keeps fp32 (autocast leaves the weights as they were);
    asked-for bf16 is an error. `reload()` gives fresh fp32 handles when the weights were cast and then
    disagreed (casting back would not restore them)."""
    from .errors import TunelensError

    check_dtype(dtype)
    hw = hw or hardware()
    record = {"requested": dtype, "chosen": "fp32", "hardware": hw.describe(), "bf16_native": hw.native,
              "agreement": None, "thresholds": dict(AGREEMENT)}
    if dtype == "fp32" or (dtype == "auto" and not hw.native):
        record["why"] = "requested fp32" if dtype == "fp32" else f"auto: no native bf16 ({hw.kind()})"
        return handles, record
    if not hw.native:
        emulated_warning(hw, "--dtype bf16:")
    from .progress import log

    log.info("tunelens: checking bf16 scoring against fp32 on the precision probe set")
    refs = [probe_scores(h) for h in handles]
    figures, missed = {}, {}
    for mode in ("autocast", "weights"):  # autocast first: it leaves the weights, so a failure costs no reload
        figures[mode] = [bf16_agreement(h, mode, ref) for h, ref in zip(handles, refs)]
        if mode == "autocast":
            for h in handles:
                to_fp32(h)
        missed[mode] = [m for f in figures[mode] for m in passes(f)]
        if missed[mode]:
            break
    by_mode = {m: fs if len(fs) > 1 else fs[0] for m, fs in figures.items()}
    record["agreement_by_mode"] = by_mode
    where = f"({'native' if hw.native else 'emulated'}: {hw.kind()})"
    if "weights" in missed and not missed["weights"]:
        record.update(chosen="bf16", mode="weights", agreement=by_mode["weights"],
                      why=f"{dtype}: bf16 agrees with fp32 on the probe set with the weights cast to bf16 {where}")
        return handles, record
    record["agreement"] = by_mode["autocast"]  # weights disagreed or were not tried: autocast is what counts
    if not missed["autocast"]:
        if reload is None:
            raise TunelensError("bf16 with cast weights disagrees with fp32 and the fp32 models cannot be reloaded "
                                "for bf16 autocast")
        handles = list(reload())
        for h in handles:
            to_bf16(h, "autocast")
        record.update(chosen="bf16", mode="autocast",
                      why=f"{dtype}: bf16 autocast agrees with fp32 on the probe set; with the weights cast it "
                          f"does not ({'; '.join(missed['weights'])}) {where}")
        return handles, record
    why = f"bf16 disagrees with fp32 on the probe set, even under autocast: {'; '.join(missed['autocast'])}"
    if dtype == "bf16":
        raise TunelensError(f"--dtype bf16: {why}; audit in fp32 (--dtype fp32 or auto)")
    record["why"] = f"auto: {why}; fp32"
    return handles, record


class PrecisionMismatch(TunelensError):
    """A model (a repair sweep's candidate) whose bf16 scores disagree with its fp32 ones while its base is scored
    in bf16: under `auto` the sweep starts again in fp32 (repair.sweep.run_sweep). `what`: the finding alone."""

    what = ""


def match_precision(record: dict, handle, name: str) -> dict:
    """Score one more model (a repair candidate) at the precision an audit already chose for its base, so the
    base and every model compared with it are scored alike. fp32: nothing to do. bf16: the same probe-set check
    as audit_precision, for this model alone; a model whose bf16 scores disagree with its fp32 ones is an error
    naming it (comparing it in fp32 with a bf16 base would mix precisions). Returns the model's ledger record."""
    from .errors import TunelensError

    if record.get("chosen") != "bf16":
        return record
    mode = record.get("mode", "weights")  # ledgers from before the autocast mode cast the weights
    figures = bf16_agreement(handle, mode)
    missed = passes(figures)
    if missed:
        what = f"{name}: bf16 disagrees with fp32 on the precision probe set ({'; '.join(missed)})"
        err = PrecisionMismatch(f"{what}, while its base is scored in bf16; run the sweep with --dtype fp32")
        err.what = what  # without the advice: what an auto sweep's fp32 record says
        raise err
    return {**record, "agreement": figures, "why": f"{record.get('why', 'bf16')}; {name} agrees in bf16 as well"}
