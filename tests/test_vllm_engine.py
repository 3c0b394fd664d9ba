"""The vLLM engine's client without vLLM: a fake OpenAI-compatible server (tests/fake_vllm.py) backed by the tiny
HF models answers as vLLM 0.32 does, so the client, the scoring dispatch, the audit handles and the bad-input
errors are tested against real numbers. The real server is tested in test_integration_vllm.py."""

from __future__ import annotations

import sys

import pytest

from fake_vllm import FakeVLLM
from tunelens.engines.vllm import ManagedServer, VLLMError, VLLMModel, free_port
from tunelens.engines.vllm_handles import vllm_models
from tunelens.errors import TunelensError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REQUESTS = [("The cat sat on the", [" mat", " dog", " a very long answer"]), ("Q: 2+2=\nA:", [" 4", " 5"]),
            ("", ["hello world"])]
PROMPTS = ["<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n", "the cat", "a dog and a cat and"]


def _both(tiny_model_dir, tiny_adapter_dir):
    from tunelens.models import resolve_model

    return (resolve_model(str(tiny_model_dir)), resolve_model(str(tiny_adapter_dir), merge_adapter="auto"))


def test_scores_and_generations_match_the_hf_engine(tiny_model_dir, tiny_adapter_dir):
    from tunelens.scoring import generate, loglikelihood

    hf = _both(tiny_model_dir, tiny_adapter_dir)
    with FakeVLLM(tiny_model_dir, adapter_dir=tiny_adapter_dir) as fake, \
            vllm_models(str(tiny_model_dir), str(tiny_adapter_dir), url=fake.url) as remote:
        assert isinstance(remote[0].model, VLLMModel) and remote[1].model.served == "tuned"
        assert remote[0].model.config.max_position_embeddings == 256
        ids = [5, 17, 42]
        for h, r in zip(hf, remote):
            a = loglikelihood(h.model, h.tokenizer, REQUESTS, progress=False)
            b = loglikelihood(r.model, r.tokenizer, REQUESTS, progress=False)
            for ra, rb in zip(a, b):
                for x, y in zip(ra, rb):
                    assert abs(x.logprob - y.logprob) < 1e-4 and x.tokens == y.tokens
                    assert x.is_greedy == y.is_greedy and x.truncated == y.truncated
            ga = generate(h.model, h.tokenizer, PROMPTS, max_new_tokens=12, stop=[" cat"], score_ids=ids,
                          progress=False)
            gb = generate(r.model, r.tokenizer, PROMPTS, max_new_tokens=12, stop=[" cat"], score_ids=ids,
                          progress=False)
            for x, y in zip(ga, gb):
                assert (x.text, x.tokens, x.stopped_by) == (y.text, y.tokens, y.stopped_by)
                assert abs(x.logprob - y.logprob) < 1e-4
                assert max(abs(p - q) for p, q in zip(x.first_logprobs, y.first_logprobs)) < 1e-4
        # the server got token ids, not text, and the tuned requests went to the LoRA module
        sent = [r for r in fake.requests if r.get("prompt_logprobs")]
        assert all(isinstance(p, list) and all(isinstance(t, int) for t in p) for r in sent for p in r["prompt"])
        assert {r["model"] for r in fake.requests} == {"base", "tuned"}  # base found by its root folder


def test_long_prompts_are_cut_and_say_so(tiny_model_dir):
    from tunelens.scoring import generate, loglikelihood

    from tunelens.models import resolve_model

    long = "the cat sat on the mat " * 80
    h = resolve_model(str(tiny_model_dir))
    [hs] = loglikelihood(h.model, h.tokenizer, [(long, [" dog"])], progress=False)
    [hg] = generate(h.model, h.tokenizer, [long], max_new_tokens=8, progress=False)
    for server_len, same in ((258, True), (200, False)):  # as tunelens starts it; a server with a shorter context
        with FakeVLLM(tiny_model_dir, max_model_len=server_len) as fake, \
                vllm_models(str(tiny_model_dir), str(tiny_model_dir), url=fake.url, tuned_url=fake.url) as (b, _):
            [s] = loglikelihood(b.model, b.tokenizer, [(long, [" dog"])], progress=False)
            [g] = generate(b.model, b.tokenizer, [long], max_new_tokens=8, progress=False)
        assert s[0].truncated > 0 and g.truncated > 0
        assert (s[0].truncated == hs[0].truncated and abs(s[0].logprob - hs[0].logprob) < 1e-4) == same
        assert (g.truncated == hg.truncated and g.tokens == hg.tokens) == same or not same


def test_audit_on_the_vllm_engine_matches_the_hf_engine(tiny_model_dir, tiny_adapter_dir, tmp_path):
    from conftest import write_pets_task
    from tunelens.audit import AuditContext, run_audit
    from tunelens.audit.base_store import BaseStore
    from tunelens.data import load_task

    spec = load_task(str(write_pets_task(tmp_path, 40)))

    def audit(pair, out):
        ctx = AuditContext(base=pair[0], tuned=pair[1], tasks=[spec], limit=24, seed=0, judge="rules",
                           progress=False, budget=None)
        return ctx, run_audit(ctx, ["task", "forgetting"], out)

    hctx, hl = audit(_both(tiny_model_dir, tiny_adapter_dir), tmp_path / "hf")
    with FakeVLLM(tiny_model_dir, adapter_dir=tiny_adapter_dir) as fake, \
            vllm_models(str(tiny_model_dir), str(tiny_adapter_dir), url=fake.url) as pair:
        vctx, vl = audit(pair, tmp_path / "vllm")
        assert BaseStore(tmp_path / "store", vctx).fingerprint != BaseStore(tmp_path / "store", hctx).fingerprint
    assert hl["engine"] == "hf" and vl["engine"] == "vllm" and vl["base"]["engine"] == "vllm"
    assert vl["base"]["served"] == "base" and vl["tuned"]["served"] == "tuned"
    assert [s["status"] for s in vl["suites"].values()] == ["ok", "ok"], vl["suites"]
    assert vl["verdict"] == hl["verdict"]
    for name in ("task", "forgetting"):
        he, ve = hl["suites"][name]["entries"], vl["suites"][name]["entries"]
        assert [e["decision"] for e in he] == [e["decision"] for e in ve]
        for a, b in zip(he, ve):
            if isinstance(a.get("delta"), float):
                assert abs(a["delta"] - b["delta"]) < 1e-3


def test_engines_never_mix(tiny_model_dir, tiny_adapter_dir):
    from tunelens.audit import AuditContext, run_audit

    hb, ht = _both(tiny_model_dir, tiny_adapter_dir)
    with FakeVLLM(tiny_model_dir, adapter_dir=tiny_adapter_dir) as fake, \
            vllm_models(str(tiny_model_dir), str(tiny_adapter_dir), url=fake.url) as (vb, _):
        with pytest.raises(TunelensError, match="one engine"):
            run_audit(AuditContext(base=vb, tuned=ht, tasks=[], progress=False), ["forgetting"])


# --- bad input ------------------------------------------------------------------------------------------------


def test_unreachable_url_names_it(tiny_model_dir, tiny_adapter_dir):
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(VLLMError, match=f"cannot reach the vLLM server at {url}.*--vllm-url"):
        with vllm_models(str(tiny_model_dir), str(tiny_adapter_dir), url=url):
            pass


def test_a_server_of_another_model_names_both(tiny_model_dir, tiny_adapter_dir, tmp_path):
    import shutil

    other = shutil.copytree(tiny_model_dir, tmp_path / "other-model")
    with FakeVLLM(other, served="other-model") as fake:
        with pytest.raises(VLLMError) as e:
            with vllm_models(str(tiny_model_dir), str(tiny_adapter_dir), url=fake.url):
                pass
    msg = str(e.value)
    assert "'other-model'" in msg and str(tiny_model_dir) in msg and "\n" not in msg


def test_no_tuned_module_says_how_to_serve_it(tiny_model_dir, tiny_adapter_dir):
    with FakeVLLM(tiny_model_dir) as fake:
        with pytest.raises(VLLMError, match=f"--lora-modules tuned={tiny_adapter_dir}"):
            with vllm_models(str(tiny_model_dir), str(tiny_adapter_dir), url=fake.url):
                pass


def test_a_rank_above_the_servers_max_says_which_flag_to_raise(tiny_model_dir, tiny_adapter_dir):
    with FakeVLLM(tiny_model_dir, runtime_lora=True, max_lora_rank=1) as fake:  # the adapter has r=4
        with pytest.raises(VLLMError, match="rank 4.*--max-lora-rank 8"):
            with vllm_models(str(tiny_model_dir), str(tiny_adapter_dir), url=fake.url):
                pass
    with FakeVLLM(tiny_model_dir, runtime_lora=True, max_lora_rank=8) as fake:  # loaded at run time
        with vllm_models(str(tiny_model_dir), str(tiny_adapter_dir), url=fake.url) as (_, t):
            assert t.model.served == "tuned"


def test_a_full_tuned_model_needs_its_own_server(tiny_model_dir):
    with FakeVLLM(tiny_model_dir) as fake:
        with pytest.raises(VLLMError, match="--vllm-tuned-url"):
            with vllm_models(str(tiny_model_dir), str(tiny_model_dir), url=fake.url):
                pass


def test_non_lora_adapters_are_refused(tiny_model_dir, tmp_path):
    from peft import IA3Config

    from conftest import save_random_lora

    ia3 = save_random_lora(tiny_model_dir, tmp_path / "ia3", IA3Config(target_modules=["k_proj", "v_proj"],
                                                                       feedforward_modules=[]), seed=0)
    with pytest.raises(TunelensError, match="LoRA adapters only.*--engine hf"):
        with vllm_models(str(tiny_model_dir), str(ia3), url="http://127.0.0.1:9"):
            pass


def test_managed_server_that_fails_shows_its_log(tiny_model_dir, tmp_path):
    # this Python has no vllm: the server exits at once, and the error carries the end of its log
    with pytest.raises(VLLMError, match="(?s)exited with code .*No module named"):
        with ManagedServer(sys.executable, tiny_model_dir, served="base", timeout=60):
            pass
    with pytest.raises(VLLMError, match="tunelens.engines.vllm_env"):
        with vllm_models(str(tiny_model_dir), str(tiny_model_dir), python=str(tmp_path / "nope" / "python")):
            pass


def test_managed_server_command_sets_rank_and_targets(tiny_model_dir, tiny_adapter_dir):
    s = ManagedServer(sys.executable, tiny_model_dir, served="base", adapter=tiny_adapter_dir, lora_rank=20,
                      lora_targets=["q_proj", "v_proj"])
    cmd = s.command(1234)
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert cmd[cmd.index("--max-lora-rank") + 1] == "32" and cmd[cmd.index("--dtype") + 1] == "float32"
    assert cmd[cmd.index("--lora-modules") + 1] == f"tuned={tiny_adapter_dir}"
    assert cmd[cmd.index("--lora-target-modules") + 1:][:2] == ["q_proj", "v_proj"]


def test_settings(tmp_path):
    from tunelens.checks import BadSetting
    from tunelens.run.config import AuditSection

    assert AuditSection().engine == "hf"
    assert AuditSection(engine="vllm", vllm_url="http://x").vllm_url == "http://x"
    with pytest.raises(BadSetting, match="hf or vllm"):
        AuditSection(engine="llama")
    with pytest.raises(BadSetting, match="--engine vllm"):
        AuditSection(vllm_url="http://x")


def test_cli_engine_vllm_unreachable_is_one_line(tiny_model_dir, tiny_adapter_dir, tmp_path):
    from typer.testing import CliRunner

    from tunelens.cli import app

    url = f"http://127.0.0.1:{free_port()}"
    r = CliRunner().invoke(app, ["audit", "--base", str(tiny_model_dir), "--tuned", str(tiny_adapter_dir),
                                 "--engine", "vllm", "--vllm-url", url, "--out", str(tmp_path / "a"),
                                 "--suites", "forgetting", "--judge", "rules"])
    assert r.exit_code == 2, r.output
    assert f"cannot reach the vLLM server at {url}" in r.output
