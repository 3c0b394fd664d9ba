"""Light checks of the built-in data for issue 20: the telecom corpus (cpt) and the two preference sets (dpo).

The counts and length statistics asserted here are the ones the datasheets report."""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter

import pytest

from tunelens.data.tasks import BUILTIN_DIR


def rows(name: str) -> list[dict]:
    lines = (BUILTIN_DIR / name / f"{name}.jsonl").read_text("utf-8").splitlines()
    return [json.loads(x) for x in lines if x.strip()]


def words(text: str) -> int:
    return len(text.split())


def opening(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower())[:3])


def test_corpus():
    rs = rows("telecom_corpus")
    assert [r["id"] for r in rs] == [f"tc-{i:04d}" for i in range(1, len(rs) + 1)]
    assert all(set(r) == {"id", "kind", "title", "text"} and r["title"].strip() and r["text"].strip() for r in rs)
    assert Counter(r["kind"] for r in rs) == {"standards_explainer": 43, "network_ops": 38, "care_article": 41}
    n = [words(r["text"]) for r in rs]
    assert (len(n), min(n), int(statistics.median(n)), max(n), sum(n)) == (122, 79, 138, 816, 21280)
    assert len({r["title"] for r in rs}) == len(rs)
    assert len({opening(r["text"]) for r in rs}) >= 0.9 * len(rs)
    assert not any(re.search(r"\buser:|\bassistant:", r["text"], re.I) for r in rs)  # no chat formatting


PREF = {
    "preference_pairs": ("pp", {c: 40 for c in ("billing", "network", "roaming", "sim_esim", "broadband_device",
                                             "plan_contract")}, {"train": 168, "test": 72}),
    "safety_preferences": ("sp", {c: 20 for c in ("weapons", "cybercrime", "fraud_scams", "self_harm",
                                                  "hate_harassment", "drugs", "privacy_surveillance", "violence",
                                                  "sexual_exploitation", "misinformation", "extremism",
                                                  "theft_burglary")}, {"train": 168, "test": 72}),
}


OPENINGS = {"preference_pairs": {"chosen": 213, "rejected": 229}, "safety_preferences": {"chosen": 168, "rejected": 165}}


@pytest.mark.parametrize("name", sorted(PREF))
def test_preference_set(name):
    prefix, cats, splits = PREF[name]
    rs = rows(name)
    assert [r["id"] for r in rs] == [f"{prefix}-{i:04d}" for i in range(1, len(rs) + 1)]
    for r in rs:
        assert all(isinstance(r[f], str) and r[f].strip() for f in ("category", "split", "prompt", "chosen", "rejected"))
        assert r["chosen"] != r["rejected"]
    assert Counter(r["category"] for r in rs) == cats
    assert Counter(r["split"] for r in rs) == splits
    for c in cats:  # every category on both sides of the split
        assert {r["split"] for r in rs if r["category"] == c} == {"train", "test"}
    prompts = [r["prompt"] for r in rs]
    assert len(set(prompts)) == len(prompts)
    assert len({opening(r["prompt"]) for r in rs}) >= 0.7 * len(rs)
    # distinct first-three-word openings of the replies, as the datasheets report them (the first 96 safety pairs
    # are formulaic, "I won't help ..." / "Sure, here's ..."; the 144 added ones vary their openings)
    assert {f: len({opening(r[f]) for r in rs}) for f in ("chosen", "rejected")} == OPENINGS[name]
    # train and test share no prompt, chosen or rejected text (near duplicates: tests/test_leakage.py)
    train = {r[f] for r in rs if r["split"] == "train" for f in ("prompt", "chosen", "rejected")}
    assert not any(r[f] in train for r in rs if r["split"] == "test" for f in ("prompt", "chosen", "rejected"))


def test_preference_flaws_and_safety_rejections():
    flaws = Counter(r["flaw"] for r in rows("preference_pairs"))
    assert set(flaws) == {"wrong_facts", "vague", "overpromises", "condescending", "asks_personal_data",
                          "ignores_question", "rude", "off_topic_long"}
    # a rejected safety answer signals compliance but stays generic: short, no digits or lists of steps
    for r in rows("safety_preferences"):
        assert words(r["rejected"]) <= 45 and not re.search(r"\d", r["rejected"]), r["id"]
