import numpy as np
import pytest
import sacrebleu

from tunelens import metrics as m


# ----------------------------------------------------------------------------- classification

def test_accuracy():
    assert m.accuracy([True, False, True, True]) == 0.75
    assert m.accuracy([1, 0]) == 0.5


GOLD = ["a", "a", "b", "b", "c"]
PRED = ["a", "b", "b", "b", "a"]


def test_macro_f1_hand_computed():
    # a: P=1/2 R=1/2 F=0.5; b: P=2/3 R=1 F=0.8; c: never predicted -> F=0
    assert m.macro_f1(PRED, GOLD) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    # a label absent from both pred and gold is skipped, not averaged in as 0
    assert m.macro_f1(PRED, GOLD, labels=["a", "b", "c", "d"]) == pytest.approx(1.3 / 3)
    assert m.macro_f1(PRED, GOLD, labels=["a", "b"]) == pytest.approx(0.65)
    assert m.macro_f1([1, 2, 3], [1, 2, 3]) == 1.0
    # a label only ever predicted counts with F=0
    assert m.macro_f1(["x", "x"], ["x", "y"]) == pytest.approx((2 / 3 + 0.0) / 2)


def test_macro_f1_matches_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    gold = rng.integers(0, 4, size=200).tolist()
    pred = [g if rng.random() < 0.6 else int(rng.integers(0, 5)) for g in gold]  # label 4 only in pred
    assert m.macro_f1(pred, gold) == pytest.approx(sk.f1_score(gold, pred, average="macro"))
    assert m.macro_f1(PRED, GOLD) == pytest.approx(sk.f1_score(GOLD, PRED, average="macro", zero_division=0))


def test_macro_f1_length_mismatch():
    with pytest.raises(ValueError):
        m.macro_f1(["a"], ["a", "b"])


# ----------------------------------------------------------------------------- QA

def test_normalize_answer():
    assert m.normalize_answer("  The  quick, brown fox's an\tapple. ") == "quick brown foxs apple"
    assert m.normalize_answer("Theory") == "theory"  # articles only as whole words


def test_exact_match():
    assert m.exact_match("The Eiffel Tower!", ["eiffel tower"]) == 1.0
    assert m.exact_match("Eiffel", ["eiffel tower", "Paris"]) == 0.0
    assert m.exact_match("paris", ["Eiffel Tower", "Paris."]) == 1.0
    assert m.exact_match("paris", "Paris") == 1.0  # bare string is one reference


def test_token_f1():
    # "big cat sat" vs "cat sat down": 2 common, P=R=2/3
    assert m.token_f1("the big cat sat", ["a cat sat down", "dog"]) == pytest.approx(2 / 3)
    # max over references
    assert m.token_f1("the big cat sat", ["dog", "big cat"]) == pytest.approx(0.8)
    assert m.token_f1("denver broncos", ["Denver Broncos"]) == 1.0
    assert m.token_f1("nothing", ["something else"]) == 0.0
    # repeated tokens count by multiplicity: pred "x x x" vs "x y": 1 common, P=1/3 R=1/2
    assert m.token_f1("x x x", ["x y"]) == pytest.approx(0.4)
    assert m.token_f1("the", ["a"]) == 1.0  # both normalise to empty


# ----------------------------------------------------------------------------- generation

def test_lcs():
    assert m._lcs("one two three four five".split(), "two four six five one".split()) == 3
    assert m._lcs(list("ABCBDAB"), list("BDCABA")) == 4


def test_rouge_l():
    # LCS = "two four five" (3), P = R = 3/5
    assert m.rouge_l("one two three four five", ["two four six five one"]) == pytest.approx(0.6)
    # normalised: "police killed gunman" vs "police kill gunman": LCS 2
    assert m.rouge_l("Police killed the gunman.", ["police kill the gunman", "xyz"]) == pytest.approx(2 / 3)
    # P=2/2, R=2/4 -> F = 2/3
    assert m.rouge_l("cat sat", ["cat sat on mat"]) == pytest.approx(2 / 3)
    assert m.rouge_l("abc", ["def"]) == 0.0


def test_bleu_matches_sacrebleu():
    hyps = ["the cat is on the mat", "there is a dog in the garden"]
    refs = [["the cat sat on the mat"], ["a dog is in the garden"]]
    expected = sacrebleu.corpus_bleu(hyps, [["the cat sat on the mat", "a dog is in the garden"]]).score / 100
    assert m.bleu(hyps, refs) == pytest.approx(expected)
    assert 0.0 < m.bleu(hyps, refs) < 1.0


def test_bleu_ragged_references():
    hyps = ["the cat is on the mat", "there is a dog in the garden"]
    refs = [["the cat sat on the mat", "a cat is on the mat"], ["a dog is in the garden"]]
    streams = [["the cat sat on the mat", "a dog is in the garden"], ["a cat is on the mat", None]]
    got = m.bleu(hyps, refs)
    assert got == pytest.approx(sacrebleu.corpus_bleu(hyps, streams).score / 100)
    assert got == pytest.approx(0.5403450262940566)
    # the extra reference can only help
    assert got > m.bleu(hyps, [r[:1] for r in refs])


def test_bleu_identical_is_one():
    assert m.bleu(["the cat sat on the mat"], [["the cat sat on the mat"]]) == pytest.approx(1.0)
    assert m.sentence_bleu("four tokens right here", ["four tokens right here"]) == pytest.approx(1.0)


def test_sentence_bleu():
    got = m.sentence_bleu("the cat is on the mat", ["the cat sat on the mat"])
    assert got == pytest.approx(sacrebleu.sentence_bleu("the cat is on the mat", ["the cat sat on the mat"]).score / 100)
    assert 0.0 < got < 1.0


def test_bleu_length_mismatch():
    with pytest.raises(ValueError):
        m.bleu(["a b"], [["a b"], ["c d"]])


# ----------------------------------------------------------------------------- calibration

def test_ece_two_bins():
    # bin (0.1,0.2]: conf 0.2, acc 0.5 -> gap 0.3; last bin: conf 0.975, acc 0.5 -> gap 0.475; each weight 1/2
    assert m.ece([0.2, 0.2, 0.95, 1.0], [0, 1, 1, 0]) == pytest.approx(0.5 * 0.3 + 0.5 * 0.475)


def test_ece_bin_edges():
    # 0.1 belongs to (0, 0.1], 0.15 to (0.1, 0.2]: separate bins -> 0.5*0.9 + 0.5*0.15
    assert m.ece([0.1, 0.15], [1, 0]) == pytest.approx(0.525)
    # 0.0 and 0.05 share the first bin -> |0.5 - 0.025|
    assert m.ece([0.0, 0.05], [1, 0]) == pytest.approx(0.475)
    # 0.3 is not pushed into (0.3, 0.4] by float rounding: shares a bin with 0.25
    assert m.ece([0.25, 0.3], [1, 0]) == pytest.approx(abs(0.5 - 0.275))
    assert m.ece([1.0, 1.0], [1, 1]) == 0.0


def test_ece_rejects_out_of_range():
    with pytest.raises(ValueError):
        m.ece([1.2], [1])


def test_brier_three_choices():
    probs = [[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]
    # item 1: 0.09 + 0.04 + 0.01 = 0.14; item 2: 0.01 + 0.49 + 0.36 = 0.86
    assert m.brier(probs, [0, 1]) == pytest.approx(0.5)
    assert m.brier([[1.0, 0.0, 0.0]], [0]) == 0.0
    assert m.brier([[0.0, 1.0, 0.0]], [0]) == 2.0


def test_brier_bad_answer_index():
    with pytest.raises(ValueError):
        m.brier([[0.5, 0.5]], [2])


# ----------------------------------------------------------------------------- bootstrap

def test_bootstrap_ci_mean():
    v = np.array([1.0, 0.0] * 200)  # n=400, p=0.5: normal approx half-width 1.96*0.025 = 0.049
    lo, hi = m.bootstrap_ci(v)
    assert lo <= 0.5 <= hi
    assert lo == pytest.approx(0.451, abs=0.01)
    assert hi == pytest.approx(0.549, abs=0.01)


def test_bootstrap_ci_deterministic():
    v = np.random.default_rng(3).random(50)
    assert m.bootstrap_ci(v, seed=7) == m.bootstrap_ci(v, seed=7)
    assert m.bootstrap_ci(v, seed=7) != m.bootstrap_ci(v, seed=8)


def test_bootstrap_ci_narrows_with_n():
    rng = np.random.default_rng(0)
    widths = []
    for n in (25, 100, 400):
        lo, hi = m.bootstrap_ci(rng.integers(0, 2, size=n).astype(float))
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
    assert widths[2] < 0.11


def test_bootstrap_general_stat_and_paired_agree_with_vectorised():
    v = np.random.default_rng(5).random(30)
    fast = m.bootstrap_ci(v, n_boot=200)
    assert m.bootstrap_ci(v, stat=lambda x: float(np.mean(x)), n_boot=200) == pytest.approx(fast)
    assert m.bootstrap_ci_paired(lambda idx: v[idx].mean(), len(v), n_boot=200) == pytest.approx(fast)
    lo, hi = m.bootstrap_ci(v, stat=np.median, n_boot=200)
    assert lo <= np.median(v) <= hi
    assert m.bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)


def test_bootstrap_paired_macro_f1():
    pred, gold = np.array(PRED * 20), np.array(GOLD * 20)
    point = m.macro_f1(pred.tolist(), gold.tolist())
    lo, hi = m.bootstrap_ci_paired(lambda idx: m.macro_f1(pred[idx].tolist(), gold[idx].tolist()), len(gold), n_boot=300)
    assert lo < point < hi
    assert hi - lo < 0.3


def test_metric_entry():
    assert m.metric_entry(np.float64(0.5), 0.4, 0.6) == {"value": 0.5, "ci95": [0.4, 0.6]}


# ----------------------------------------------------------------------------- empty input

@pytest.mark.parametrize("call", [
    lambda: m.accuracy([]),
    lambda: m.macro_f1([], []),
    lambda: m.exact_match("x", []),
    lambda: m.token_f1("x", []),
    lambda: m.rouge_l("x", []),
    lambda: m.bleu([], []),
    lambda: m.sentence_bleu("x", []),
    lambda: m.ece([], []),
    lambda: m.brier([], []),
    lambda: m.bootstrap_ci([]),
    lambda: m.bootstrap_ci_paired(lambda idx: 0.0, 0),
])
def test_empty_inputs_raise(call):
    with pytest.raises(ValueError, match="empty|no items|references"):
        call()


# ----------------------------------------------------------------------------- numbers and units

@pytest.mark.parametrize("text,expected", [
    ("twelve", "12"), ("Twelve", "12"), ("zero", "0"), ("nineteen", "19"), ("ninety-nine", "99"),
    ("twenty one", "21"), ("twenty-one", "21"), ("one hundred", "100"), ("a hundred", "100"),
    ("one hundred and fifty", "150"), ("two thousand and five", "2005"), ("a thousand years", "1000 year"),
    ("one thousand seven hundred and sixty", "1760"), ("three million", "3000000"),
    ("1,500 people", "1500 people"), ("1,760", "1760"), ("10,000", "10000"),
    ("seven kilometres", "7 km"), ("7 km", "7 km"), ("7km", "7 km"), ("7 kilometers", "7 km"),
    ("12 feet", "12 foot"), ("twelve ft", "12 foot"), ("5 mins", "5 minute"), ("five minutes", "5 minute"),
    ("60%", "60 percent"), ("sixty per cent", "60 percent"), ("32°F", "32 degree fahrenheit"),
    ("32 degrees Fahrenheit", "32 degree fahrenheit"), ("110 kilometres per hour", "110 kmh"), ("110 km/h", "110 kmh"),
    ("16 oz", "16 ounce"), ("six months", "6 month"),
])
def test_normalize_numbers(text, expected):
    assert m.normalize_numbers(text) == expected


def test_normalize_numbers_keeps_other_words_and_separate_numbers():
    assert m.normalize_numbers("five six") == "5 6"  # two numbers, not 11
    assert m.normalize_numbers("eleven twelve") == "11 12"
    assert m.normalize_numbers("the 1990s") == "the 1990s"
    assert m.normalize_numbers("H2O") == "h2o"
    assert m.normalize_numbers("often") == "often" and m.normalize_numbers("a cat") == "a cat"
    assert m.normalize_numbers("Don't stop") == "don't stop"


@pytest.mark.parametrize("a,b", [("twelve", "12"), ("7 km", "seven kilometres"), ("1,500", "1500"),
                                 ("every three years", "every 3 years"), ("100 degrees Celsius", "100 °C"),
                                 ("2,000", "two thousand"), ("6 pints", "six pints")])
def test_normalize_numbers_makes_spellings_agree(a, b):
    assert m.normalize_answer(m.normalize_numbers(a)) == m.normalize_answer(m.normalize_numbers(b))
