"""Audit on the real default model: against itself nothing moves; against a damaged copy it regresses."""

import pytest
import torch

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def damaged_handle(default_handle, tmp_path_factory):
    """The default model's weights moved 30% of the way toward a fresh random initialisation."""
    from transformers import AutoModelForCausalLM

    from tunelens.models import resolve_model

    torch.manual_seed(0)
    rand = AutoModelForCausalLM.from_config(default_handle.model.config)
    damaged = AutoModelForCausalLM.from_config(default_handle.model.config)
    with torch.no_grad():
        state = {k: 0.7 * v + 0.3 * rand.state_dict()[k] for k, v in default_handle.model.state_dict().items()}
        damaged.load_state_dict(state)
    folder = tmp_path_factory.mktemp("damaged")
    damaged.save_pretrained(folder)
    default_handle.tokenizer.save_pretrained(folder)
    return resolve_model(str(folder))


def _entries(ledger, suite):
    block = ledger["suites"][suite]
    assert block["status"] == "ok", block.get("error")
    return {e["metric"]: e for e in block["entries"]}


def test_default_against_itself_moves_nothing(default_handle):
    from tunelens.audit import AuditContext, run_audit
    from tunelens.data import load_task

    ctx = AuditContext(base=default_handle, tuned=default_handle, tasks=[load_task("telecom-intent")], limit=12,
                       n_boot=100, progress=False)
    ledger = run_audit(ctx, ["task", "forgetting", "compatibility", "safety"])
    for suite in ("task", "forgetting", "compatibility", "safety"):
        for name, e in _entries(ledger, suite).items():
            if e["delta"] is not None:
                assert e["delta"] == pytest.approx(0, abs=1e-9), (suite, name)


def test_damaged_copy_shows_regressions(default_handle, damaged_handle):
    from tunelens.audit import AuditContext, run_audit

    ctx = AuditContext(base=default_handle, tuned=damaged_handle, limit=40, n_boot=200, progress=False)
    ledger = run_audit(ctx, ["forgetting", "compatibility"])
    f = _entries(ledger, "forgetting")
    assert f["text_loss"]["delta"] > 0 and f["text_loss"]["ci95"][0] > 0  # clearly worse language modelling
    assert f["general_knowledge.p_vocab_correct"]["delta"] < 0
    c = _entries(ledger, "compatibility")
    assert c["general-knowledge.negative_flip_rate"]["tuned"] > 0
