"""No audit item is taught by the built-in training-side data.

Training side: general-replay (prompt, response; mixed in by `tune --replay`), safety-tune (prompt, response),
the telecom demo's train split (message, reply; split by tunelens.data.load_items), the telecom corpus for
continued pretraining (title, text; `--objective cpt`) and the train splits of the two preference sets
(preference-pairs and safety-preferences: prompt, chosen, rejected; `--objective dpo`). Audit side:
general-knowledge (question), general-text (passage), counterfactual-context (question, passage),
over-refusal (prompt), safety-probes (prompt), the telecom test split (message, reply) and the test splits of the
two preference sets (prompt, chosen, rejected; the preference suite). The preference sets have no task spec yet
(no preference task type), so they and the corpus are read straight from their JSONL files, and their split is
the `split` field of each record.

For every (training set, audit set) pair, every training text field against every audit text field:

1. exact duplicate: the same text after lowercasing and dropping punctuation and extra spaces;
2. near duplicate: word Jaccard >= 0.7 on the lowercase word sets of the two texts (prompt vs question, response
   vs passage, ...), found with a prefix-filter index (rarest words first) and then verified;
3. same topic, for long passages (general-text; >= 20 content words): one training text holding >= 30% of the
   passage's content words (on main the six replay answers on rice, seasons, sewing a button, tides,
   vinaigrette and the blue sky held 37-56%; every other passage <= 21%);
4. taught fact, for the QA audit items (general-knowledge: the correct choice; counterfactual-context: the
   common, real-world answer): a training item (prompt + response) that contains the answer AND shares at
   least 2 content words with the audit question. Both sides are normalised with metrics.normalize_numbers and
   metrics.normalize_answer ("twelve" = "12", "1,500" = "1500", articles and punctuation dropped) and the answer
   must occur as whole words ("ten" is not in "often"). Only answers that carry information are checked: a
   normalised answer with a digit, or of at least 4 characters that is not a stopword ("none", "both", "true",
   ... are skipped). Content words are the question's words of at least 3 letters that are not stopwords or
   question words, compared after a light plural stem ("planets" = "planet"), and not counting the answer's own
   words (the answer "Pacific Ocean" and the question "Which ocean ..." share "ocean" for free).

Also: no over-refusal prompt (safe, should be answered) near-duplicates a safety probe (harmful, should be
refused), or the two sets label the same request both ways.

Run `python tests/test_leakage.py` to print every flagged pair with its ids. Known pairs not fixed here (in data
this change does not own) are listed in KNOWN with the reason; the test fails on any other finding, and on a
KNOWN entry that no longer occurs.

Limits of the rule: a question with fewer than 2 content words left after the answer's own words (e.g. "How many
hours are in a day?" -> "day") can never be flagged as a taught fact (29 of the 509 QA items), and a fact taught in
other words (a synonym, a paraphrased question) is not seen; the near-duplicate and same-topic checks cover
copies, not paraphrases.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import lru_cache

from tunelens.data import load_items, load_task
from tunelens.data.tasks import BUILTIN_DIR
from tunelens.metrics import normalize_answer, normalize_numbers

JACCARD = 0.7
MIN_SHARED = 2
MIN_SHARE = 1 / 3  # ... and at least this share of the question's content words (long questions need more)
MIN_ANSWER_CHARS = 4
WINDOW = 1  # sentences either side of the answer's sentence where the question's words are looked for
TOPIC = 0.3  # share of a long passage's content words found in one training text
TOPIC_MIN_WORDS = 20

STOPWORDS = set("""
a about above after again against all also am an and any are as at be because been before being below between
both but by can could did do does doing down during each few for from further had has have having he her here
hers herself him himself his how i if in into is it its itself just me more most my myself no nor not now of off
on once only or other our ours out over own same she should so some such than that the their theirs them then
there these they this those through to too under until up very was we were what when where which while who whom
why will with would you your yours yourself one ones many much called name named known word words use used
usually often every per made make makes true false none neither either yes thing things way example answer
question following correct option options best describes describe mean means term refers refer called
""".split())


@dataclass(frozen=True)
class Text:
    set: str
    id: str
    field: str
    text: str


# ---------------------------------------------------------------- the sets


def _rows(task: str, split: str = "test"):
    return load_items(load_task(task), split)


def _jsonl(folder: str, split: str | None = None) -> list[dict]:
    """The records of a built-in JSONL set without a task spec (only those of `split`, if given)."""
    rows = [json.loads(x) for x in (BUILTIN_DIR / folder / f"{folder}.jsonl").read_text("utf-8").splitlines() if x.strip()]
    return [r for r in rows if split is None or r["split"] == split]


PREFERENCE_SETS = ("preference_pairs", "safety_preferences")
PREFERENCE_FIELDS = ("prompt", "chosen", "rejected")


def preference_texts(name: str, split: str) -> list[Text]:
    return [Text(f"{name}_{split}", r["id"], f, r[f]) for r in _jsonl(name, split) for f in PREFERENCE_FIELDS]


def training_side() -> dict[str, list[Text]]:
    out = {}
    for name, task, split in (("general_replay", "general-replay", "test"), ("safety_tune", "safety-tune", "test"),
                              ("telecom_train", "telecom-reply", "train")):
        out[name] = [Text(name, it.id, f, v) for it in _rows(task, split)
                     for f, v in (("prompt", it.fields["prompt"]), ("response", it.references[0]))]
    out["telecom_corpus"] = [Text("telecom_corpus", r["id"], f, r[f]) for r in _jsonl("telecom_corpus")
                             for f in ("title", "text")]
    for name in PREFERENCE_SETS:
        out[f"{name}_train"] = preference_texts(name, "train")
    return out


def audit_side() -> dict[str, list[Text]]:
    gk = _rows("general-knowledge")
    cc = _rows("counterfactual-context")
    tel = _rows("telecom-reply", "test")
    return {
        "general_knowledge": [Text("general_knowledge", it.id, "question", it.fields["question"]) for it in gk],
        "general_text": [Text("general_text", it.id, "passage", it.fields["prompt"]) for it in _rows("general-text")],
        "counterfactual_context": [Text("counterfactual_context", it.id, f, v) for it in cc
                                   for f, v in (("question", it.fields["prompt"]), ("passage", it.context))],
        "over_refusal": [Text("over_refusal", it.id, "prompt", it.fields["prompt"]) for it in _rows("over-refusal")],
        "safety_probes": [Text("safety_probes", it.id, "prompt", it.fields["prompt"]) for it in _rows("safety-probes")],
        "telecom_test": [Text("telecom_test", it.id, f, v) for it in tel
                         for f, v in (("message", it.fields["prompt"]), ("reply", it.references[0]))],
        **{f"{name}_test": preference_texts(name, "test") for name in PREFERENCE_SETS},
    }


def qa_items() -> list[tuple[str, str, str, str]]:
    """(set, id, question, answer) of the audit's QA items: the answers a training item must not teach."""
    gk = [("general_knowledge", it.id, it.fields["question"], it.choices[it.answer])
          for it in _rows("general-knowledge")]
    cc = [("counterfactual_context", it.id, it.fields["prompt"], it.fields["common_answer"])
          for it in _rows("counterfactual-context")]
    return gk + cc


# ---------------------------------------------------------------- the checker


def word_set(text: str) -> frozenset[str]:
    return frozenset(re.findall(r"[a-z0-9]+", text.lower()))


def squash(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


@lru_cache(maxsize=None)
def norm(text: str) -> str:
    return normalize_answer(normalize_numbers(text))


def _stem(w: str) -> str:
    return w[:-1] if len(w) > 4 and w.endswith("s") and not w.endswith("ss") else w


@lru_cache(maxsize=None)
def content_words(text: str) -> frozenset[str]:
    return frozenset(_stem(w) for w in norm(text).split() if len(w) >= 3 and w.isalpha() and w not in STOPWORDS)


def answer_checked(answer: str) -> bool:
    a = norm(answer)
    return bool(a) and (any(ch.isdigit() for ch in a) or (len(a) >= MIN_ANSWER_CHARS and a not in STOPWORDS))


def jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def duplicates(train: list[Text], audit: list[Text], threshold: float = JACCARD) -> list[tuple]:
    """(kind, training text, audit text, jaccard) for exact and near duplicates; prefix filtering keeps it fast:
    with words ordered rarest first, two sets with Jaccard >= t share a word among the first |A| - ceil(t|A|) + 1."""
    sets = {id(t): word_set(t.text) for t in train + audit}
    df = Counter(w for s in sets.values() for w in s)
    order = lambda s: sorted(s, key=lambda w: (df[w], w))
    prefix = lambda s: order(s)[: len(s) - int(-(-threshold * len(s) // 1)) + 1] if s else []
    index = defaultdict(list)
    for t in train:
        for w in prefix(sets[id(t)]):
            index[w].append(t)
    exact = defaultdict(list)
    for t in train:
        exact[squash(t.text)].append(t)
    found = []
    for a in audit:
        sa = sets[id(a)]
        seen = set()
        for t in exact.get(squash(a.text), []):
            found.append(("exact", t, a, 1.0))
            seen.add(id(t))
        for w in prefix(sa):
            for t in index[w]:
                if id(t) in seen:
                    continue
                seen.add(id(t))
                j = jaccard(sets[id(t)], sa)
                if j >= threshold:
                    found.append(("near", t, a, round(j, 3)))
    return found


def sentences(text: str) -> list[str]:
    return [x for x in re.split(r"(?<=[.!?])\s+|\n+", text) if x.strip()]


def taught_facts(train: list[Text], qa: list[tuple[str, str, str, str]], window: int = WINDOW) -> list[tuple]:
    """(training set, training id, audit set, audit id, answer, shared content words) for taught facts.

    A training item is its prompt's and response's sentences in order; the answer must occur in one of them and
    the shared content words are counted in that sentence and the `window` sentences either side."""
    docs = defaultdict(list)  # (set, id) -> sentences, normalised
    for t in train:
        docs[(t.set, t.id)] += [norm(x) for x in sentences(t.text)]
    tokens = {k: set(" ".join(v).split()) for k, v in docs.items()}
    stems = {k: [{_stem(w) for w in x.split()} for x in v] for k, v in docs.items()}
    index = defaultdict(set)
    for k, ws in tokens.items():
        for w in ws:
            index[w].add(k)
    found = []
    for aset, aid, question, answer in qa:
        if not answer_checked(answer):
            continue
        a = norm(answer)
        a_words = a.split()
        cands = set.intersection(*(index.get(w, set()) for w in a_words))
        q = content_words(question) - {_stem(w) for w in a_words}
        pattern = re.compile(r"(?<!\S)" + re.escape(a) + r"(?!\S)")
        for k in sorted(cands):
            shared = set()
            for i, sent in enumerate(docs[k]):
                if pattern.search(sent):
                    for near in stems[k][max(0, i - window): i + window + 1]:
                        shared |= q & near
            if len(shared) >= MIN_SHARED and len(shared) >= MIN_SHARE * len(q):
                found.append((k[0], k[1], aset, aid, answer, sorted(shared)))
    return found


def same_topic(train: list[Text], audit: list[Text], threshold: float = TOPIC) -> list[tuple]:
    """(training text, audit passage, share) where one training text holds >= threshold of a long audit passage's
    content words (a rewritten passage on the same topic: Jaccard misses it, the passage's loss does not)."""
    audit = [a for a in audit if a.field == "passage" and len(content_words(a.text)) >= TOPIC_MIN_WORDS]
    if not audit:
        return []
    cw = {id(t): content_words(t.text) for t in train}
    index = defaultdict(list)
    for t in train:
        for w in cw[id(t)]:
            index[w].append(t)
    found = []
    for a in audit:
        words = content_words(a.text)
        hits = Counter(id(t) for w in words for t in index[w])
        by_id = {id(t): t for w in words for t in index[w]}
        for key, n in hits.items():
            if n / len(words) >= threshold:
                found.append((by_id[key], a, round(n / len(words), 2)))
    return found


def check(train_sets: dict[str, list[Text]], audit_sets: dict[str, list[Text]], qa) -> dict[tuple, list]:
    """Every finding, keyed by (training set, audit set)."""
    out = defaultdict(list)
    for tname, train in train_sets.items():
        for aname, audit in audit_sets.items():
            for kind, t, a, j in duplicates(train, audit):
                out[(tname, aname)].append(f"{kind} duplicate (jaccard {j}): {t.id}.{t.field} ~ {a.id}.{a.field}")
        for aname, audit in audit_sets.items():
            for t, a, share in same_topic(train, audit):
                out[(tname, aname)].append(f"same topic ({share:.0%} of the passage's content words): "
                                           f"{t.id}.{t.field} ~ {a.id}.{a.field}")
        for ts, tid, aset, aid, answer, shared in taught_facts(train, qa):
            out[(ts, aset)].append(f"taught fact: {tid} contains {answer!r} and shares {shared} with {aid}")
    return dict(out)


def describe(findings: dict[tuple, list], show: int = 1000) -> str:
    lines = []
    for (tname, aname), msgs in sorted(findings.items()):
        lines.append(f"{tname} x {aname}: {len(msgs)} flagged")
        lines += [f"  {m}" for m in msgs[:show]]
    return "\n".join(lines) or "no leaks"


# ---------------------------------------------------------------- tests


# Findings accepted with a reason, {(training set, audit set): {finding, ...}}; none today. (The telecom demo's two
# stock replies shared across its splits, tc-a-0127 and tc-a-0269, were rewritten.)
KNOWN: dict = {}


def test_no_training_item_teaches_an_audit_item():
    start = time.perf_counter()
    findings = check(training_side(), audit_side(), qa_items())
    assert time.perf_counter() - start < 20  # 6 training x 8 audit sets: about 6 s on an idle 2-core machine
    new = {k: [m for m in v if m not in KNOWN.get(k, set())] for k, v in findings.items()}
    new = {k: v for k, v in new.items() if v}
    assert not new, "\n" + describe(new)
    gone = {k: v - set(findings.get(k, [])) for k, v in KNOWN.items()}
    assert not any(gone.values()), f"fixed, remove from KNOWN: {gone}"


def test_over_refusal_prompts_do_not_near_duplicate_safety_probes():
    audit = audit_side()
    found = duplicates(audit["over_refusal"], audit["safety_probes"])
    assert not found, [(t.id, a.id, j) for _, t, a, j in found]


def test_the_checker_catches_planted_leaks():
    """Copy, lightly edit and paraphrase real audit items into a fake training set: each kind must be caught."""
    audit, qa = audit_side(), qa_items()
    gk = next(x for x in qa if x[1] == "gk-0007")  # Which element has the chemical symbol Au? -> Gold
    cc = next(x for x in qa if x[0] == "counterfactual_context" and any(c.isdigit() or c.isalpha()
                                                                          for c in x[3]) and answer_checked(x[3]))
    passage = audit["general_text"][0]
    words = passage.text.split()
    edited = " ".join(words[:-3] + ["and", "so", "on."])  # a near copy
    fake = [
        Text("planted", "p-copy", "prompt", audit["over_refusal"][0].text.upper() + "!"),  # exact after squash
        Text("planted", "p-near", "response", edited),
        Text("planted", "p-fact", "response", f"Quiz time. {gk[2]} It is {gk[3].lower()}, of course."),
        Text("planted", "p-cc", "response", f"Q: {cc[2]} A: {cc[3]}."),
        Text("planted", "p-clean", "response", "Tomatoes grow best in full sun with steady watering."),
    ]
    findings = check({"planted": fake}, audit, qa)
    text = describe(findings)
    assert f"exact duplicate (jaccard 1.0): p-copy.prompt ~ {audit['over_refusal'][0].id}.prompt" in text
    assert f"p-near.response ~ {passage.id}.passage" in text
    assert f"taught fact: p-fact contains {gk[3]!r}" in text and f"with {gk[1]}" in text
    assert f"taught fact: p-cc contains {cc[3]!r}" in text
    assert "p-clean" not in text
    # a number written in words in training still teaches the digits of the audit answer, and vice versa
    nums = [Text("planted", "p-num", "response", "A spider has eight legs, unlike an insect with six.")]
    assert any(f[3] == "cc-0030" for f in taught_facts(nums, qa))


def test_answer_rule():
    assert answer_checked("1912") and answer_checked("5") and answer_checked("carbon dioxide")
    assert not answer_checked("Both") and not answer_checked("Au") and not answer_checked("the")
    assert content_words("How many planets are in the Solar System?") == {"planet", "solar", "system"}
    assert norm("Twelve thousand five hundred") == "12500" and norm("1,500 km") == "1500 km"


if __name__ == "__main__":
    t0 = time.perf_counter()
    f = check(training_side(), audit_side(), qa_items())
    print(describe(f))
    a = audit_side()
    d = duplicates(a["over_refusal"], a["safety_probes"])
    print(f"over_refusal x safety_probes: {len(d)} near duplicates", [(t.id, x.id, j) for _, t, x, j in d])
    print(f"{time.perf_counter() - t0:.2f} s")
