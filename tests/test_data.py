import csv
import json
import re
from pathlib import Path

import pytest
import yaml

from tunelens.data import (
    answer_text,
    continuations,
    fewshot_examples,
    list_builtin_tasks,
    load_items,
    load_task,
    render_prompt,
    to_chat,
)
from tunelens.data.tasks import BUILTIN_DIR
from tunelens.errors import DataError

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def chat_tokenizer():
    """A word-level tokenizer: rendering only needs its chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({"[UNK]": 0, "<eos>": 1}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", eos_token="<eos>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


ROWS = {
    "multiple_choice": [
        {"question": "2+2?", "choices": ["3", "4", "5"], "answer": 1},
        {"question": "Capital of France?", "choices": ["Paris", "Rome"], "answer": "Paris"},
        {"question": "Sky colour?", "choices": ["green", "blue", "red"], "answer": "B"},
    ],
    "classification": [
        {"text": "great film", "label": "pos"},
        {"text": "awful film", "label": "neg"},
        {"text": "fine film", "label": "neutral"},
    ],
    "generation": [
        {"prompt": "Say hi", "references": ["hi", "hello"], "context": "Greeting task."},
        {"prompt": "Say bye", "references": "bye"},
        {"prompt": "Count", "references": ["1 2 3"]},
    ],
    "chat": [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "q"},
                      {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]},
    ],
}
EXPECTED_ANSWERS = {
    "multiple_choice": [1, 0, 1],
    "classification": [2, 0, 1],  # labels sorted: neg, neutral, pos
    "generation": None,
    "chat": None,
}


def write(path: Path, rows: list[dict]) -> Path:
    """Write rows in the format given by the path's suffix."""
    suffix = path.suffix
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    elif suffix == ".csv":
        columns = list(dict.fromkeys(k for r in rows for k in r))
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, columns)
            w.writeheader()
            for r in rows:
                w.writerow({k: "|".join(v) if k == "choices" else json.dumps(v) if isinstance(v, list) else v
                            for k, v in r.items()})
    elif suffix == ".parquet":
        import pandas as pd

        # parquet wants one type per column
        rows = [{**r, "references": [r["references"]] if isinstance(r.get("references"), str) else r.get("references")}
                if "references" in r else r for r in rows]
        rows = [{**r, "answer": str(r["answer"])} if "answer" in r else r for r in rows]
        pd.DataFrame(rows).to_parquet(path)
    return path


# ---------------------------------------------------------------- every type from every format


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
@pytest.mark.parametrize("task_type", list(ROWS))
def test_each_type_from_each_format(tmp_path, task_type, suffix):
    data = write(tmp_path / f"data{suffix}", ROWS[task_type])
    spec = load_task(data)  # a bare data file: type inferred from the columns
    assert spec.type == task_type
    items = load_items(spec, "test")
    assert [it.id for it in items] == ["all-0", "all-1", "all-2"]
    assert all(it.type == task_type for it in items)
    line0 = {".jsonl": 1, ".csv": 2}.get(suffix, 0)
    assert items[0].source == f"{data}:{line0}"
    if EXPECTED_ANSWERS[task_type]:
        assert [it.answer for it in items] == EXPECTED_ANSWERS[task_type]
    if task_type == "multiple_choice":
        assert items[0].choices == ["3", "4", "5"]
    if task_type == "classification":
        assert items[0].choices == ["neg", "neutral", "pos"]
        assert items[0].fields["text"] == "great film"
    if task_type == "generation":
        assert items[0].references == ["hi", "hello"] and items[1].references == ["bye"]
        assert items[0].context == "Greeting task." and items[1].context is None
    if task_type == "chat":
        assert items[1].messages[0] == {"role": "system", "content": "be brief"}


def test_yaml_spec_with_field_mapping_and_split_sources(tmp_path):
    write(tmp_path / "train.jsonl", [{"id": "a", "q": "x?", "opts": ["p", "q"], "gold": 0, "extra": 7}])
    write(tmp_path / "test.csv", [{"id": "b", "q": "y?", "opts": ["p", "q"], "gold": "1"}])
    (tmp_path / "task.yaml").write_text(yaml.safe_dump({
        "type": "multiple_choice", "data": {"train": "train.jsonl", "test": "test.csv"},
        "fields": {"question": "q", "choices": "opts", "answer": "gold"}}))
    spec = load_task(tmp_path / "task.yaml")
    assert spec.name == "task" and spec.base_dir == tmp_path
    train, test = load_items(spec, "train"), load_items(spec, "test")
    assert train[0].id == "a" and train[0].fields["question"] == "x?" and train[0].fields["extra"] == 7
    assert test[0].answer == 1 and test[0].choices == ["p", "q"]  # CSV "p|q"; "1" is an index


def test_list_of_sources_and_split_field(tmp_path):
    write(tmp_path / "a.jsonl", [{"text": "t1", "label": "x", "split": "train"},
                                 {"text": "t2", "label": "y", "split": "test"}])
    write(tmp_path / "b.jsonl", [{"text": "t3", "label": "z", "split": "train"}])
    spec = load_task({"type": "classification", "data": [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")],
                      "split_field": "split"})
    train = load_items(spec, "train")
    assert [it.fields["text"] for it in train] == ["t1", "t3"] and [it.id for it in train] == ["train-0", "train-1"]
    assert load_items(spec, "test")[0].choices == ["x", "y", "z"]  # labels of all splits
    with pytest.raises(DataError, match="unknown split 'validation'; the data has: test, train"):
        load_items(spec, "validation")


def test_hf_source(monkeypatch):
    import datasets

    def fake_load(name, config=None, split=None):
        assert (name, config) == ("someone/sentiment", "small")
        features = datasets.Features({"text": datasets.Value("string"),
                                      "label": datasets.ClassLabel(names=["neg", "pos"])})
        rows = {"train": [{"text": "good", "label": 1}], "test": [{"text": "bad", "label": 0}]}[split]
        return datasets.Dataset.from_list(rows, features=features)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    spec = load_task({"type": "classification", "data": {"train": "hf:someone/sentiment:small",
                                                         "test": "hf:someone/sentiment:small"}})
    items = load_items(spec, "test")
    assert items[0].fields["label"] == "neg" and items[0].choices == ["neg", "pos"]
    assert items[0].source == "hf:someone/sentiment:small:0" and items[0].id == "test-0"


# ---------------------------------------------------------------- bad input: file, line and field in the message


def _error(tmp_path, name, content, split="test", spec_extra=None) -> str:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    spec = load_task({"type": "multiple_choice", "data": str(path), **(spec_extra or {})})
    with pytest.raises(DataError) as e:
        load_items(spec, split)
    return str(e.value)


def mc(**kw):
    return json.dumps({"question": "q", "choices": ["a", "b"], "answer": 0, **kw}) + "\n"


def test_malformed_jsonl_line(tmp_path):
    msg = _error(tmp_path, "d.jsonl", mc() * 6 + '{"question": "q", \n')
    assert msg.startswith(f"{tmp_path / 'd.jsonl'}:7: invalid JSON: ")


def test_blank_lines_are_skipped_and_lines_counted(tmp_path):
    (tmp_path / "d.jsonl").write_text(mc() + "\n   \n" + mc())
    items = load_items({"type": "multiple_choice", "data": str(tmp_path / "d.jsonl")}, "test")
    assert [it.source.rsplit(":", 1)[1] for it in items] == ["1", "4"]


def test_missing_field(tmp_path):
    msg = _error(tmp_path, "d.jsonl", mc() * 2 + json.dumps({"question": "q", "choices": ["a", "b"]}) + "\n")
    assert msg == f"{tmp_path / 'd.jsonl'}:3, field 'answer': missing"


def test_missing_mapped_field_names_the_column(tmp_path):
    path = write(tmp_path / "d.jsonl", [{"message": "hi"}])
    with pytest.raises(DataError, match=r"d.jsonl:1, field 'intent': missing"):
        load_items({"type": "classification", "data": str(path), "fields": {"text": "message", "label": "intent"}},
                   "test")


@pytest.mark.parametrize("answer", [2, "c", "C", -1, True])
def test_answer_not_among_choices(tmp_path, answer):
    msg = _error(tmp_path, "d.jsonl", mc(answer=answer))
    assert f"{tmp_path / 'd.jsonl'}:1, field 'answer': answer {answer!r} is not among the choices" in msg


def test_fewer_than_two_choices(tmp_path):
    msg = _error(tmp_path, "d.jsonl", mc() + mc(choices=["only"]))
    assert msg == f"{tmp_path / 'd.jsonl'}:2, field 'choices': needs at least 2 choices, got 1"


def test_csv_errors_use_file_lines(tmp_path):
    msg = _error(tmp_path, "d.csv", 'question,choices,answer\nq,"a|b",0\n"multi\nline",a,0\n')
    assert msg == f"{tmp_path / 'd.csv'}:3, field 'choices': needs at least 2 choices, got 1"


def test_json_array_errors_use_element_index(tmp_path):
    msg = _error(tmp_path, "d.json", json.dumps([json.loads(mc()), {"question": "q", "choices": ["a", "b"]}]))
    assert msg == f"{tmp_path / 'd.json'}:1, field 'answer': missing"


def test_empty_references(tmp_path):
    path = write(tmp_path / "g.jsonl", [{"prompt": "p", "references": ["r"]}, {"prompt": "p", "references": []}])
    with pytest.raises(DataError) as e:
        load_items({"type": "generation", "data": str(path)}, "test")
    assert str(e.value).startswith(f"{path}:2, field 'references': empty")


def test_bad_label_and_bad_chat(tmp_path):
    path = write(tmp_path / "c.jsonl", [{"text": "t", "label": "x"}, {"text": "t", "label": "y"}])
    with pytest.raises(DataError, match=r"c.jsonl:2, field 'label': label 'y' is not one of the task's labels: x, z"):
        load_items({"type": "classification", "data": str(path), "labels": ["x", "z"]}, "test")
    path = write(tmp_path / "m.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(DataError, match=r"m.jsonl:1, field 'messages': the last message must be the assistant's"):
        load_items({"type": "chat", "data": str(path)}, "test")


def test_empty_file_and_empty_split(tmp_path):
    assert _error(tmp_path, "d.jsonl", "\n\n") == f"{tmp_path / 'd.jsonl'}: contains no items"
    path = write(tmp_path / "s.jsonl", [{"question": "q", "choices": ["a", "b"], "answer": 0, "split": "train"}])
    with pytest.raises(DataError, match="split 'test' contains no items|unknown split 'test'"):
        load_items({"type": "multiple_choice", "data": str(path), "split_field": "split"}, "test")
    spec = load_task({"type": "multiple_choice", "data": str(path), "split_ratios": {"train": 0.99, "test": 0.01}})
    with pytest.raises(DataError, match="split 'test' contains no items"):
        load_items(spec, "test")


def test_unknown_split(tmp_path):
    write(tmp_path / "t.jsonl", [json.loads(mc())])
    spec = load_task({"type": "multiple_choice", "data": {"train": str(tmp_path / "t.jsonl")}})
    with pytest.raises(DataError, match="unknown split 'test'; this task has: train"):
        load_items(spec, "test")


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path / 'nope.jsonl'}: file not found"):
        load_items({"type": "multiple_choice", "data": str(tmp_path / "nope.jsonl")}, "test")
    assert "cannot read file: not UTF-8 text" in _error(tmp_path, "bin.jsonl", b"\xff\xfe\x00garbage")
    assert "cannot read file" in _error(tmp_path, "bad.parquet", b"not parquet")
    assert "unsupported file type '.txt'" in _error(tmp_path, "d.txt", mc())
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(DataError, match="not a file"):
        load_items({"type": "multiple_choice", "data": str(tmp_path / "dir.jsonl")}, "test")


# ---------------------------------------------------------------- size limits (issue 15)


@pytest.fixture
def no_limit_env(monkeypatch):
    monkeypatch.delenv("TUNELENS_MAX_LINE_BYTES", raising=False)
    monkeypatch.delenv("TUNELENS_MAX_JSON_BYTES", raising=False)


def test_giant_jsonl_line_is_refused_with_file_and_line(tmp_path, monkeypatch):
    """A 2 MB single-line item used to be tokenised and scored for minutes; now it stops at the reader."""
    monkeypatch.setenv("TUNELENS_MAX_LINE_BYTES", str(1 << 20))
    giant = json.dumps({"question": "q", "choices": ["a", "b"], "answer": 0, "pad": ""})
    giant = giant.replace('"pad": ""', '"pad": "' + "x" * ((2 << 20) - len(giant)) + '"')
    assert len(giant) == 2 << 20
    msg = _error(tmp_path, "d.jsonl", mc() + mc() + giant + "\n" + mc())
    assert msg == (f"{tmp_path / 'd.jsonl'}:3: line is 2,097,152 bytes, over the 1,048,576-byte limit "
                   "(TUNELENS_MAX_LINE_BYTES); split or shorten the item")


def test_giant_line_is_measured_not_held_in_memory(tmp_path, monkeypatch, no_limit_env):
    import tracemalloc

    from tunelens.data import readers

    monkeypatch.setattr(readers, "MAX_LINE_BYTES", 4096)
    path = tmp_path / "d.jsonl"
    path.write_text(mc() + json.dumps({"question": "y" * (4 << 20)}) + "\n")
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r"d.jsonl:2: line is 4,194,3\d\d bytes, over the 4,096-byte limit"):
            readers.read_file(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # a quarter of the line: it was read in bounded chunks


@pytest.mark.parametrize("suffix, line, what", [(".jsonl", 3, "line"), (".csv", 4, "line"),
                                                (".json", 2, "item"), (".parquet", 2, "item")])
def test_item_over_the_limit_names_file_and_line_in_every_format(tmp_path, monkeypatch, no_limit_env,
                                                                  suffix, line, what):
    from tunelens.data import readers

    monkeypatch.setattr(readers, "MAX_LINE_BYTES", 1000)
    rows = ROWS["classification"][:2] + [{"text": "long " * 400, "label": "pos"}]
    path = write(tmp_path / f"d{suffix}", rows)
    with pytest.raises(DataError) as e:
        load_items(path, "test")
    assert re.fullmatch(rf"{re.escape(str(path))}:{line}: {what} is [\d,]+ bytes( as a JSON line)?, over the "
                        r"1,000-byte limit \(TUNELENS_MAX_LINE_BYTES\); split or shorten the item", str(e.value))


def test_csv_row_spanning_lines_is_bounded_and_long_fields_below_the_limit_are_read(tmp_path, monkeypatch,
                                                                                   no_limit_env):
    # csv's own 131,072-character field limit no longer refuses a field the byte limit allows
    long_text = "word " * 40_000
    path = write(tmp_path / "ok.csv", ROWS["classification"][:2] + [{"text": long_text, "label": "pos"}])
    assert load_items(path, "test")[2].fields["text"] == long_text
    # an unclosed quote makes one row of the rest of the file: refused where the row starts
    monkeypatch.setenv("TUNELENS_MAX_LINE_BYTES", "100")
    msg = _error(tmp_path, "d.csv", 'question,choices,answer\nq,"a|b",0\n"open quote\n' + "more text\n" * 20)
    assert msg == (f"{tmp_path / 'd.csv'}:3: row (lines 3-13) is over the 100-byte limit (TUNELENS_MAX_LINE_BYTES); "
                   "check for an unclosed quote, or split or shorten the item")


def test_whole_file_json_over_its_cap_is_refused_before_parsing(tmp_path, monkeypatch, no_limit_env):
    from tunelens.data import readers

    path = write(tmp_path / "d.json", ROWS["classification"])
    monkeypatch.setenv("TUNELENS_MAX_JSON_BYTES", "50")
    monkeypatch.setattr(readers.json, "loads", lambda *a, **k: pytest.fail("parsed a file over the cap"))
    with pytest.raises(DataError) as e:
        readers.read_file(path)
    assert str(e.value) == (f"{path}: file is {path.stat().st_size:,} bytes, over the 50-byte limit for a whole-file "
                            "JSON array (TUNELENS_MAX_JSON_BYTES); write it as JSONL, one item per line")


def test_bad_limit_setting_and_undecodable_byte_name_what_and_where(tmp_path, monkeypatch, no_limit_env):
    from tunelens.errors import TunelensError

    path = write(tmp_path / "d.jsonl", ROWS["classification"])
    monkeypatch.setenv("TUNELENS_MAX_LINE_BYTES", "1MB")
    with pytest.raises(TunelensError, match=r"^TUNELENS_MAX_LINE_BYTES must be a positive number of bytes, got '1MB'$"):
        load_items(path, "test")
    monkeypatch.delenv("TUNELENS_MAX_LINE_BYTES")
    msg = _error(tmp_path, "bin.jsonl", mc().encode() + b'{"question": "q\xff"}\n')
    assert msg == f"{tmp_path / 'bin.jsonl'}:2: cannot read file: not UTF-8 text (byte 0xff at column 16)"


def test_duplicate_ids(tmp_path):
    msg = _error(tmp_path, "d.jsonl", mc(id="x") + mc(id="y") + mc(id="x"))
    assert msg == f"{tmp_path / 'd.jsonl'}:3, field 'id': duplicate id 'x' (also at {tmp_path / 'd.jsonl'}:1)"


def test_bare_file_with_unknown_columns(tmp_path):
    path = write(tmp_path / "d.jsonl", [{"foo": 1}])
    with pytest.raises(DataError, match="cannot tell the task type from the columns"):
        load_task(path)


# ---------------------------------------------------------------- spec validation


def test_unknown_yaml_key_suggests_closest(tmp_path):
    (tmp_path / "t.yaml").write_text("type: classification\ndata: d.jsonl\ntemplte: '{text}'\n")
    with pytest.raises(DataError) as e:
        load_task(tmp_path / "t.yaml")
    assert str(e.value) == f"{tmp_path / 't.yaml'}: unknown key 'templte'; did you mean 'template'?"
    with pytest.raises(DataError, match="unknown key 'zzz'; valid keys: name, type"):
        load_task({"type": "classification", "data": "d.jsonl", "zzz": 1})
    with pytest.raises(DataError, match="'textt' is not a field of classification tasks; did you mean 'text'"):
        load_task({"type": "classification", "data": "d.jsonl", "fields": {"textt": "message"}})
    with pytest.raises(DataError, match="no task file or built-in task named 'telecom-intnet'; did you mean "
                                        "'telecom-intent'"):
        load_task("telecom-intnet")


@pytest.mark.parametrize("key,value", [("fewshot", "two"), ("fewshot", True), ("chat_template", "yes"),
                                       ("stop", [1]), ("labels", "x"), ("split_ratios", {"train": "a"}),
                                       ("template", 3), ("data", 5)])
def test_wrong_types_name_the_key(key, value):
    with pytest.raises(DataError, match=f"field '{key}': '{key}' must be"):
        load_task({"type": "classification", "data": "d.jsonl", key: value})


def test_spec_consistency_errors(tmp_path):
    with pytest.raises(DataError, match="must sum to 1"):
        load_task({"type": "classification", "data": "d.jsonl", "split_ratios": {"train": 0.5, "test": 0.2}})
    with pytest.raises(DataError, match="'type' must be one of .* did you mean 'generation'"):
        load_task({"type": "generaton", "data": "d.jsonl"})
    with pytest.raises(DataError, match="missing key 'data'"):
        load_task({"type": "chat"})
    (tmp_path / "bad.yaml").write_text("type: chat\ndata: [a\n")
    with pytest.raises(DataError, match=r"bad.yaml:\d+: invalid YAML"):
        load_task(tmp_path / "bad.yaml")


# ---------------------------------------------------------------- stratified split


def _labelled_rows(n_per_label=(30, 20, 10)):
    rows = []
    for label, n in zip("abc", n_per_label):
        rows += [{"id": f"{label}{i:03d}", "text": f"text {label} {i}", "label": label} for i in range(n)]
    return rows


def _split_ids(tmp_path, rows, name, seed=0, **extra):
    path = write(tmp_path / name, rows)
    spec = load_task({"type": "classification", "data": str(path), "seed": seed,
                      "split_ratios": {"train": 0.7, "validation": 0.1, "test": 0.2}, **extra})
    return {s: [it.id for it in load_items(spec, s)] for s in ("train", "validation", "test")}


def test_stratified_split_deterministic_disjoint_stratified(tmp_path):
    rows = _labelled_rows()
    splits = _split_ids(tmp_path, rows, "a.jsonl")
    assert splits == _split_ids(tmp_path, rows, "a.jsonl")
    ids = [i for s in splits.values() for i in s]
    assert len(ids) == len(set(ids)) == len(rows)
    test_labels = [i[0] for i in splits["test"]]
    assert (test_labels.count("a"), test_labels.count("b"), test_labels.count("c")) == (6, 4, 2)
    # file order does not matter; the seed does
    shuffled = _split_ids(tmp_path, rows[::-1], "b.jsonl")
    assert {s: set(v) for s, v in shuffled.items()} == {s: set(v) for s, v in splits.items()}
    assert _split_ids(tmp_path, rows, "a.jsonl", seed=1)["test"] != splits["test"]
    # a generation view stratified on the same column gets the same split
    gen_rows = [{"id": r["id"], "prompt": r["text"], "references": "r", "label": r["label"]} for r in rows]
    path = write(tmp_path / "g.jsonl", gen_rows)
    spec = load_task({"type": "generation", "data": str(path), "stratify_by": "label",
                      "split_ratios": {"train": 0.7, "validation": 0.1, "test": 0.2}})
    assert [it.id for it in load_items(spec, "test")] == splits["test"]


# ---------------------------------------------------------------- rendering


def _cls_spec(tmp_path, **extra):
    path = write(tmp_path / "c.jsonl", [{"id": f"i{n}", "text": t, "label": l} for n, (t, l) in
                                        enumerate([("good", "pos"), ("bad", "neg"), ("meh", "neg"), ("wow", "pos")])])
    return load_task({"type": "classification", "data": str(path), "template": "Review: {text}\nSentiment ({choices}):",
                      **extra})


def test_render_without_chat_template(tmp_path):
    spec = _cls_spec(tmp_path, chat_template=False)
    items = load_items(spec, "test")
    prompt = render_prompt(spec, items[0], shots=items[1:3])
    assert prompt == ("Review: bad\nSentiment (neg, pos): neg\n\nReview: meh\nSentiment (neg, pos): neg\n\n"
                      "Review: good\nSentiment (neg, pos):")
    assert continuations(spec, items[0]) == [" neg", " pos"]
    assert answer_text(spec, items[0]) == "pos"
    assert render_prompt(spec, items[0], template="{choices_lettered}\n{text}") == "A. neg\nB. pos\ngood"


def test_render_with_chat_template(tmp_path, chat_tokenizer):
    spec = _cls_spec(tmp_path, system="Be terse.")
    items = load_items(spec, "test")
    prompt = render_prompt(spec, items[0], chat_tokenizer, shots=[items[1]])
    assert prompt == ("<|system|>Be terse.<|end|>\n<|user|>Review: bad\nSentiment (neg, pos):<|end|>\n"
                      "<|assistant|>neg<|end|>\n<|user|>Review: good\nSentiment (neg, pos):<|end|>\n<|assistant|>")
    assert continuations(spec, items[0]) == ["neg", "pos"]
    assert to_chat(spec, items[0]) == [{"role": "system", "content": "Be terse."},
                                       {"role": "user", "content": "Review: good\nSentiment (neg, pos):"},
                                       {"role": "assistant", "content": "pos"}]


def test_render_generation_chat_items_and_target(tmp_path, chat_tokenizer):
    path = write(tmp_path / "g.jsonl", ROWS["generation"][:2])
    spec = load_task({"type": "generation", "data": str(path), "chat_template": False})
    a, b = load_items(spec, "test")
    assert render_prompt(spec, a) == "Greeting task.\n\nSay hi" and render_prompt(spec, b) == "Say bye"
    assert answer_text(spec, a) == "hi"

    path = write(tmp_path / "r.jsonl", [{"message": "no signal", "intent": "outage", "reply": "Sorry!"}])
    spec = load_task({"type": "generation", "data": str(path), "fields": {"prompt": "message", "references": "reply"},
                      "target": "reply", "template": "Customer: {prompt} ({intent})"})
    item = load_items(spec, "test")[0]
    assert to_chat(spec, item) == [{"role": "user", "content": "Customer: no signal (outage)"},
                                   {"role": "assistant", "content": "Sorry!"}]

    path = write(tmp_path / "m.jsonl", ROWS["chat"][1:2])
    spec = load_task(path)
    item = load_items(spec, "test")[0]
    assert render_prompt(spec, item, chat_tokenizer) == "<|system|>be brief<|end|>\n<|user|>q<|end|>\n<|assistant|>"
    assert to_chat(spec, item) == item.messages and answer_text(spec, item) == "a"


def test_template_errors(tmp_path):
    spec = _cls_spec(tmp_path, template="{txt}")
    with pytest.raises(DataError, match=r"field 'template': template placeholder \{txt\} is not a field"):
        render_prompt(spec, load_items(spec, "test")[0])
    from tunelens.errors import ModelError
    from transformers import PreTrainedTokenizerFast

    spec = _cls_spec(tmp_path)
    no_template = PreTrainedTokenizerFast(tokenizer_object=__import__("tokenizers").Tokenizer(
        __import__("tokenizers").models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")))
    with pytest.raises(ModelError, match="chat_template: false"):
        render_prompt(spec, load_items(spec, "test")[0], no_template)


@pytest.mark.parametrize("template, problem", [
    ("Review: {text", "a '{' that is never closed"),
    ("Review: {0}", "positional placeholder {0} (name a field)"),
    ("Review: {text!r}", "malformed placeholder {text!r}"),
    ("Review: {a.b}", "malformed placeholder {a.b}"),
    ("Review: {text:>9}", "malformed placeholder {text:>9}"),
    ("Review: {text:}", "malformed placeholder {text:}"),
    ("Review: {}", "malformed placeholder {}"),
    ("Review: { text }", "malformed placeholder { text }"),
    ("Review: text}", "a '}' with no '{' before it"),
])
def test_malformed_template_placeholder_is_an_error_at_load(tmp_path, template, problem):
    """A malformed placeholder was sent to the model verbatim; now loading the spec names the file, the line and
    the key, so it is reported before any model loads."""
    (tmp_path / "t.yaml").write_text(f"type: classification\ndata: d.jsonl\ntemplate: {json.dumps(template)}\n")
    with pytest.raises(DataError) as e:
        load_task(tmp_path / "t.yaml")
    assert str(e.value).startswith(f"{tmp_path / 't.yaml'}:3, field 'template': {problem}; only plain {{field}} ")
    with pytest.raises(DataError, match="field 'paraphrases': paraphrase 1: "):
        load_task({"type": "classification", "data": "d.jsonl", "paraphrases": ["{text}", template]})


def test_template_escapes_and_unknown_placeholder_reported_when_items_are_read(tmp_path):
    """{{ and }} are literal braces; a placeholder naming no field of the rows is reported when the items are read
    (before a model is asked for anything), naming the spec, the key and the row."""
    spec = _cls_spec(tmp_path, template='JSON {{"review": "{text}"}}')
    assert render_prompt(spec, load_items(spec, "test")[0]) == 'JSON {"review": "good"}'
    spec = _cls_spec(tmp_path, template="Review: {txt}")
    with pytest.raises(DataError, match=r"field 'template': template placeholder \{txt\} is not a field of the item "
                                        r"at .*c.jsonl:1 \(available: choices, choices_lettered, context, id, label"):
        load_items(spec, "test")
    spec = _cls_spec(tmp_path, paraphrases=["Review: {text}", "Text: {review}"])
    with pytest.raises(DataError, match=r"field 'paraphrases': paraphrase 1: template placeholder \{review\}"):
        load_items(spec, "train")


def test_fewshot_deterministic(tmp_path):
    spec = _cls_spec(tmp_path)
    items = load_items(spec, "train")
    shots = fewshot_examples(spec, items, 2, seed=0)
    assert [s.id for s in shots] == [s.id for s in fewshot_examples(spec, items[::-1], 2, seed=0)]
    assert len({s.id for s in shots}) == 2
    excluded = fewshot_examples(spec, items, 2, seed=0, exclude_id=shots[0].id)
    assert shots[0].id not in [s.id for s in excluded] and shots[1].id in [s.id for s in excluded]
    seeds = {tuple(s.id for s in fewshot_examples(spec, items, 2, seed=k)) for k in range(10)}
    assert len(seeds) > 1
    with pytest.raises(DataError, match="fewshot is 4 but the train split has only 3 other items"):
        fewshot_examples(spec, items, 4, seed=0, exclude_id="i0")


# ---------------------------------------------------------------- built-in tasks

PARTS = [BUILTIN_DIR / "telecom" / "parts" / p for p in ("part_a.jsonl", "part_b.jsonl")]


def test_builtin_specs_parse():
    assert {"telecom-intent", "telecom-reply"} <= set(list_builtin_tasks())
    intent = load_task("telecom-intent")
    assert intent.type == "classification" and len(intent.labels) == 7 and len(intent.paraphrases) >= 5
    assert load_task("telecom-reply").target == "reply"


@pytest.mark.skipif(not all(p.exists() for p in PARTS), reason="telecom data not written yet")
def test_builtin_telecom_items():
    intent, reply = load_task("telecom-intent"), load_task("telecom-reply")
    sizes = {}
    for split in ("train", "validation", "test"):
        a, b = load_items(intent, split), load_items(reply, split)
        assert [it.id for it in a] == [it.id for it in b]
        sizes[split] = len(a)
    assert abs(sizes["test"] / sum(sizes.values()) - 0.2) < 0.02
    item = load_items(intent, "test")[0]
    for template in [intent.template, *intent.paraphrases]:
        assert item.fields["text"] in render_prompt(intent, item, template=template)


def test_stratified_order_every_prefix_keeps_the_mix_and_is_seeded():
    """The telecom test split keeps file order: its first rows cover 4 of 7 intents. Every prefix of the
    stratified order holds each intent in proportion (within one item), the same for the same seed."""
    from collections import Counter

    from tunelens.data import load_items, load_task
    from tunelens.data.order import draw_order, order_digest, ordered, stratum_of

    spec = load_task("telecom-intent")
    items = load_items(spec, "test")
    assert len({stratum_of(spec, it) for it in items[:24]}) < 7  # why: the file's own order
    order = ordered(spec, items, 0)
    assert sorted(it.id for it in order) == sorted(it.id for it in items)
    share = Counter(stratum_of(spec, it) for it in items)
    for k in (7, 24, 40, 76):
        got = Counter(stratum_of(spec, it) for it in order[:k])
        for s, n in share.items():
            assert abs(got[s] - k * n / len(items)) <= 1, (k, s)
    assert order_digest(ordered(spec, items, 0)) == order_digest(order)
    assert order_digest(ordered(spec, items, 1)) != order_digest(order)
    # the sequential audit's draws: the same pool (a prefix of the order), shuffled with the seed
    pool = draw_order(spec, items, 0, 40)
    assert sorted(it.id for it in pool) == sorted(it.id for it in order[:40])
    assert [it.id for it in pool] != [it.id for it in order[:40]]


def test_eval_limit_is_a_stratified_prefix(tiny_model_dir):
    from tunelens.data import load_task
    from tunelens.data.order import stratum_of
    from tunelens.evaluate import evaluate
    from tunelens.models import resolve_model

    spec = load_task("telecom-intent")
    res = evaluate(resolve_model(str(tiny_model_dir)), spec, limit=14, progress=False, n_boot=10)
    answers = [r["answer"] for r in res.records]
    assert sorted(set(answers)) == list(range(7)) and all(answers.count(a) == 2 for a in range(7))
    assert res.info["task"]["pool"] == 133 and res.info["task"]["order"]
