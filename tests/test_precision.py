"""Precision by hardware (tunelens.precision): detection, the training choice and its calibration cache, the run
stage hash, and the audits' bf16 agreement check."""

from __future__ import annotations

import json
import logging

import pytest

from tunelens import precision as PR
from tunelens.checks import BadSetting

ZEN3 = "model name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2 avx avx2 fma\n"
ZEN4 = "model name\t: AMD EPYC 9B14\nflags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16\n"
SPR = "model name\t: Intel Xeon 8480\nflags\t\t: avx2 avx512f avx512_bf16 amx_tile amx_bf16\n"
NATIVE = PR.Hardware("cpu", "test cpu", ("avx2", "avx512f", "avx512_bf16"), True)
EMULATED = PR.Hardware("cpu", "test cpu", ("avx2",), False)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELENS_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.mark.parametrize("text, native, kind", [(ZEN3, False, "avx2 only"), (ZEN4, True, "avx512_bf16"),
                                                (SPR, True, "avx512_bf16 + amx_bf16"), ("", False, "no avx2")])
def test_cpu_flags(text, native, kind):
    hw = PR.cpu_bf16(text)
    assert hw.native is native and hw.kind() == kind
    assert ("native" if native else "emulated") in hw.describe()


def test_this_machine_is_described():
    hw = PR.hardware()
    assert hw.describe() and isinstance(hw.native, bool)


def test_auto_without_native_bf16_is_fp32_without_measuring():
    def measure():
        raise AssertionError("no calibration on hardware without native bf16")

    c = PR.choose_training("auto", EMULATED, measure, {"k": 1})
    assert c.chosen == "fp32" and c.why == "auto: no native bf16 (avx2 only)" and c.calibration is None


def test_auto_with_native_bf16_measures_once_and_caches(home):
    calls = []

    def measure(speedup):
        def run():
            calls.append(speedup)
            return {"fp32_s": 1.0, "bf16_s": 1.0 / speedup, "speedup": speedup}
        return run

    key = {"version": 1, "shape": [8, 64], "hardware": "test"}
    c = PR.choose_training("auto", NATIVE, measure(1.4), key)
    assert c.chosen == "bf16" and "1.40x faster" in c.why and c.calibration["cached"] is False
    files = list((home / "precision").glob("calibration-*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["key"] == key
    again = PR.choose_training("auto", NATIVE, measure(0.5), key)  # cached: the second measurement never runs
    assert again.chosen == "bf16" and again.calibration["cached"] is True and calls == [1.4]
    slow = PR.choose_training("auto", NATIVE, measure(1.02), {**key, "shape": [8, 96]})
    assert slow.chosen == "fp32" and "below 1.1x" in slow.why
    ranks = PR.choose_training("auto", NATIVE, None, {**key, "shape": [8, 128]})  # multi-process: no measuring
    assert ranks.chosen == "fp32" and "multi-process" in ranks.why and calls == [1.4, 1.02]


def test_requested_dtypes_are_taken_and_emulated_bf16_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="tunelens"):
        assert PR.choose_training("fp32", NATIVE).chosen == "fp32"
        assert not caplog.records
        c = PR.choose_training("bf16", EMULATED)
    assert c.chosen == "bf16" and "emulated" in c.why
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "emulated here and slow" in warned[0]


def test_bad_dtype_names_the_key():
    from tunelens.tune import load_config

    with pytest.raises(BadSetting, match="dtype must be one of auto, fp32, bf16.*did you mean 'bf16'"):
        load_config(data=["x"], dtype="bf61")


def test_calibration_of_a_tiny_model(tiny_model_dir, home):
    """The real measurement: fp32 and bf16-autocast steps of the model at the run's median batch, cached."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunelens.tune.trainer import CompletionCollator, completion_loss

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    rows = [{"input_ids": list(range(5, 5 + n)), "labels": [-100] * (n - 2) + [7, 8]} for n in range(6, 30)]
    state = torch.random.get_rng_state()
    import tunelens.precision as mod

    orig = mod.hardware
    mod.hardware = lambda: NATIVE
    try:
        c = PR.training_precision("auto", model, rows, 4, CompletionCollator(0), completion_loss, "full")
    finally:
        mod.hardware = orig
    assert torch.equal(state, torch.random.get_rng_state())  # training draws the same dropout masks as before
    assert c.calibration and c.calibration["fp32_s"] > 0 and c.calibration["bf16_s"] > 0
    assert c.calibration["shape"] == [4, 32] and c.chosen in ("fp32", "bf16")
    assert all(p.grad is None for p in model.parameters())


# ------------------------------------------------------------------------------------------------ tuning runs


def _tiny_tune(tiny_model_dir, tmp_path, **kw):
    from tests.test_tune import tiny_cfg, write_task
    from tunelens.tune import tune

    out = tmp_path / "run"
    tune(tiny_cfg(tiny_model_dir, write_task(tmp_path / "data"), out, max_steps=2, **kw))
    return json.loads((out / "run.json").read_text())


def test_run_json_records_the_precision(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(PR, "hardware", lambda: EMULATED)
    run = _tiny_tune(tiny_model_dir, tmp_path)
    p = run["precision"]
    assert (p["requested"], p["chosen"], p["why"]) == ("auto", "fp32", "auto: no native bf16 (avx2 only)")
    assert run["config"]["dtype"] == "auto" and run["status"] == "finished"


def test_bf16_training_runs_under_autocast(tiny_model_dir, tmp_path, monkeypatch, caplog):
    import transformers

    seen = {}
    real = transformers.Trainer.__init__

    def spy(self, *a, **kw):
        seen["bf16"] = kw["args"].bf16
        real(self, *a, **kw)

    monkeypatch.setattr(transformers.Trainer, "__init__", spy)
    monkeypatch.setattr(PR, "hardware", lambda: EMULATED)
    with caplog.at_level(logging.WARNING, logger="tunelens"):
        run = _tiny_tune(tiny_model_dir, tmp_path, dtype="bf16")
    assert seen["bf16"] is True and run["precision"]["chosen"] == "bf16"
    assert any("emulated here and slow" in r.getMessage() for r in caplog.records)


def test_a_run_from_before_the_dtype_setting_still_resumes(tiny_model_dir, tmp_path):
    from tunelens.tune.trainer import _prepare_out

    from tests.test_tune import tiny_cfg, write_task

    out = tmp_path / "run"
    cfg = tiny_cfg(tiny_model_dir, write_task(tmp_path / "data"), out, resume=True)
    old = cfg.to_dict()
    del old["dtype"]
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"config": old}))
    assert _prepare_out(cfg, out, {}) is None  # the same run, not "a different tuning run"


# ------------------------------------------------------------------------------------------------ run hashes


def _hashes(tmp_path, tune_extra: dict, audit_extra: dict | None = None) -> dict:
    import yaml

    from tunelens.run.config import load_run_config
    from tunelens.run.pipeline import stage_hashes

    p = tmp_path / f"run{len(list(tmp_path.glob('run*.yaml')))}.yaml"
    tune = {"data": ["telecom-intent"], "max_steps": 2, **tune_extra}
    p.write_text(yaml.safe_dump({"model": "default", "stages": ["tune", "audit"], "tune": tune,
                                 "audit": dict(audit_extra or {})}))
    return stage_hashes(load_run_config(p))


def test_stage_hash_changes_only_when_the_precision_can_change_results(tmp_path, monkeypatch):
    monkeypatch.setattr(PR, "hardware", lambda: EMULATED)
    before = _hashes(tmp_path, {})
    assert _hashes(tmp_path, {"dtype": "auto"}) == before  # auto is fp32 here: cached runs stay valid
    assert _hashes(tmp_path, {"dtype": "fp32"}, {"dtype": "fp32"}) == before
    bf16 = _hashes(tmp_path, {"dtype": "bf16"})
    assert bf16["tune"] != before["tune"] and bf16["audit"] != before["audit"]  # the audit reads the tune
    audit_bf16 = _hashes(tmp_path, {}, {"dtype": "bf16"})
    assert audit_bf16["tune"] == before["tune"] and audit_bf16["audit"] != before["audit"]
    monkeypatch.setattr(PR, "hardware", lambda: NATIVE)
    assert _hashes(tmp_path, {"dtype": "auto"})["tune"] != before["tune"]  # may be bf16 on this machine
    assert _hashes(tmp_path, {"dtype": "fp32"}, {"dtype": "fp32"}) == before


# ------------------------------------------------------------------------------------------------ audits


def test_compare_figures():
    fp32 = {"ll": [[(-1.0, 2), (-3.0, 1)], [(-2.0, 1), (-1.5, 1)]], "argmax": [[1, 2, 3, 4], [5, 6]]}
    bf16 = {"ll": [[(-1.02, 2), (-3.1, 1)], [(-1.4, 1), (-1.5, 1)]], "argmax": [[1, 2, 9, 4], [5, 6]]}
    f = PR.compare(fp32, bf16)
    assert f["max_abs_dll"] == pytest.approx(0.6) and f["mean_abs_dll"] == pytest.approx((0.01 + 0.1 + 0.6) / 4)
    assert f["argmax_agreement"] == 0.5  # the second question's best choice flipped
    assert f["greedy_agreement"] == pytest.approx(5 / 6)  # teacher-forced: one position differs
    assert len(PR.passes(f)) == 4 and PR.passes(PR.compare(fp32, fp32)) == []


def _handles(tiny_model_dir):
    from tunelens.models import resolve_model

    return [resolve_model(str(tiny_model_dir)), resolve_model(str(tiny_model_dir))]


def test_audit_fp32_and_auto_without_native_bf16_leave_the_models(tiny_model_dir):
    import torch

    hs = _handles(tiny_model_dir)
    for dtype in ("fp32", "auto"):
        out, rec = PR.audit_precision(dtype, hs, hw=EMULATED)
        assert out is hs and rec["chosen"] == "fp32" and rec["agreement"] is None
        assert all(next(h.model.parameters()).dtype == torch.float32 for h in hs)


def test_audit_bf16_runs_the_agreement_check(tiny_model_dir, caplog):
    """Forced bf16 (emulated here, slow but a tiny model is fast): both models cast, the figures recorded."""
    import torch

    hs = _handles(tiny_model_dir)
    with caplog.at_level(logging.WARNING, logger="tunelens"):
        out, rec = PR.audit_precision("bf16", hs, hw=EMULATED)
    assert any("emulated here and slow" in r.getMessage() for r in caplog.records)
    assert rec["chosen"] == "bf16" and len(rec["agreement"]) == 2
    f = rec["agreement"][0]
    assert f["questions"] == PR.PROBE_ITEMS and f["greedy_tokens"] > 0 and f["argmax_agreement"] >= 0.99
    assert all(next(h.model.parameters()).dtype == torch.bfloat16 for h in out)


def test_audit_auto_falls_back_to_reloaded_fp32_when_bf16_disagrees(tiny_model_dir, monkeypatch):
    import torch

    monkeypatch.setattr(PR, "AGREEMENT", {**PR.AGREEMENT, "max_abs_dll": 0.0, "mean_abs_dll": 0.0})
    hs = _handles(tiny_model_dir)
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        before = hs[0].model(input_ids=ids).logits
    out, rec = PR.audit_precision("auto", hs, reload=lambda: pytest.fail("autocast failing needs no reload"),
                                  hw=NATIVE)
    assert out == hs and rec["chosen"] == "fp32" and "even under autocast" in rec["why"]
    assert set(rec["agreement_by_mode"]) == {"autocast"}  # the cast was not even tried
    assert next(out[0].model.parameters()).dtype == torch.float32
    with torch.no_grad():  # autocast undone: the model scores exactly as before the check
        assert torch.equal(out[0].model(input_ids=ids).logits, before)
    from tunelens.errors import TunelensError

    with pytest.raises(TunelensError, match="--dtype bf16: bf16 disagrees with fp32"):
        PR.audit_precision("bf16", _handles(tiny_model_dir), hw=NATIVE)


def test_audit_uses_bf16_autocast_where_only_autocast_agrees(tiny_model_dir, monkeypatch):
    """Cast weights that disagree and autocast that agrees (as measured on an AMX CPU with the default model,
    docs/audit.md): the models are reloaded in fp32 and scored under bf16 autocast, with fp32 logits."""
    import torch

    real = PR.bf16_agreement

    def agreement(h, mode="weights", ref=None):
        f = real(h, mode, ref)
        return {**f, "mean_abs_dll": 1.0} if mode == "weights" else f

    monkeypatch.setattr(PR, "bf16_agreement", agreement)
    fresh = _handles(tiny_model_dir)
    out, rec = PR.audit_precision("auto", _handles(tiny_model_dir), reload=lambda: fresh, hw=NATIVE)
    assert out == fresh and rec["chosen"] == "bf16" and rec["mode"] == "autocast"
    assert "autocast agrees" in rec["why"] and "mean_abs_dll 1.0000 > 0.02" in rec["why"]
    assert set(rec["agreement_by_mode"]) == {"autocast", "weights"} and rec["agreement"] == \
        rec["agreement_by_mode"]["autocast"]
    model = out[0].model
    assert next(model.parameters()).dtype == torch.float32
    ids = torch.tensor([[1, 5, 9, 3]])
    seen = []
    hook = model.model.layers[0].mlp.up_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    hook.remove()
    assert seen == [torch.bfloat16] and logits.dtype == torch.float32  # bf16 products, fp32 logits
    PR.to_fp32(out[0])
    plain = _handles(tiny_model_dir)[0]
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, plain.model(input_ids=ids).logits)
    assert not any("_tunelens_fp32_forward" in m.__dict__ for m in model.modules())


def test_audit_prefers_cast_weights_when_they_agree(tiny_model_dir):
    import torch

    out, rec = PR.audit_precision("bf16", _handles(tiny_model_dir), hw=NATIVE)
    assert rec["chosen"] == "bf16" and rec["mode"] == "weights"
    assert all(next(h.model.parameters()).dtype == torch.bfloat16 for h in out)
    assert not any("_tunelens_fp32_forward" in m.__dict__ for h in out for m in h.model.modules())


def test_match_precision_scores_a_candidate_like_its_base(tiny_model_dir, monkeypatch):
    """A repair sweep's candidates follow the reference audit's choice: fp32 leaves them, bf16 casts each after
    its own agreement check, and a candidate that disagrees is an error naming it."""
    import torch

    from tunelens.errors import TunelensError

    h = _handles(tiny_model_dir)[0]
    fp32 = {"requested": "auto", "chosen": "fp32", "why": "auto: no native bf16"}
    assert PR.match_precision(fp32, h, "cand") is fp32
    assert next(h.model.parameters()).dtype == torch.float32
    bf16 = {"requested": "bf16", "chosen": "bf16", "why": "bf16: agrees", "agreement": None}
    rec = PR.match_precision(bf16, h, "cand")
    assert rec["chosen"] == "bf16" and rec["agreement"]["argmax_agreement"] >= 0.99 and "cand agrees" in rec["why"]
    assert next(h.model.parameters()).dtype == torch.bfloat16
    auto = {**bf16, "mode": "autocast"}  # a base scored under autocast: the candidate is too
    h2 = _handles(tiny_model_dir)[0]
    rec = PR.match_precision(auto, h2, "cand")
    assert rec["mode"] == "autocast" and next(h2.model.parameters()).dtype == torch.float32
    assert "_tunelens_fp32_forward" in h2.model.__dict__
    monkeypatch.setattr(PR, "AGREEMENT", {**PR.AGREEMENT, "max_abs_dll": 0.0, "mean_abs_dll": 0.0})
    with pytest.raises(TunelensError, match="other-cand: bf16 disagrees with fp32.*--dtype fp32"):
        PR.match_precision(bf16, _handles(tiny_model_dir)[0], "other-cand")


def test_base_store_keeps_bf16_modes_apart():
    """Cached base results scored with cast weights, under autocast and in fp32 are three stores; fp32 and
    cast-weights ledgers (written before the autocast mode) keep their fingerprints."""
    from types import SimpleNamespace

    from tunelens.audit.base_store import _precision_part

    parts = [_precision_part(SimpleNamespace(precision=p)) for p in (
        None, {"chosen": "fp32"}, {"chosen": "bf16"}, {"chosen": "bf16", "mode": "weights"},
        {"chosen": "bf16", "mode": "autocast"})]
    assert parts[0] == parts[1] == () and parts[2] == parts[3] == ("precision=bf16",)
    assert parts[4] == ("precision=bf16-autocast",)
