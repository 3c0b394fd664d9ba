"""Task specs (YAML) and their items, read and validated.

Task types and the fields each row provides (`fields:` in the spec maps a task field to a column):

- ``multiple_choice``: ``question``, ``choices`` (a list of at least 2 strings; in CSV a JSON list
  or "a|b|c"), ``answer``: a 0-based index, the text of one choice, or a letter A/B/C...
  (a string is matched against the choice texts first; in CSV a digit string is an index).
- ``classification``: ``text``, ``label``. The label set is the spec's ``labels:`` if given, else
  the sorted unique labels of all splits; it becomes every item's choices and ``answer`` is the
  index of the item's label.
- ``generation``: ``prompt``, ``references`` (a list of strings, or one string), optional ``context``.
- ``chat``: ``messages``, a list of ``{role, content}`` with roles system/user/assistant whose last
  message is the assistant's (the training target).

Any other columns are kept in ``Item.fields`` and can be used as template placeholders.

Splits come from one of:

- ``data: {train: a.jsonl, test: b.jsonl}`` -- one source (or list of sources) per split;
- ``data: all.jsonl`` + ``split_field: split`` -- every row names its split;
- ``data: all.jsonl`` + ``split_ratios: {train: 0.8, test: 0.2}`` -- a seeded split, stratified
  by ``stratify_by`` (default: the label column for classification). Within each stratum rows are
  sorted by id and shuffled with a seed derived from (seed, stratum), so an item's split does not
  depend on file order or on the other strata;
- ``data: all.jsonl`` alone -- the same rows serve every split.

A source is a path relative to the spec's folder (.jsonl .json .csv .parquet), a list of them
(concatenated), or ``hf:name[:config]`` (datasets.load_dataset; the split is the requested one,
or "train" when the rows are split by ``split_field``/``split_ratios``).

Items without an ``id`` column get ``<split>-<n>`` (``all-<n>`` when one source serves every split,
so an item keeps its id across splits).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import re
import string
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..checks import key_lines, read_yaml
from ..errors import DataError, suggest
from .readers import DATA_SUFFIXES, Row, is_hf, read_source

TASK_TYPES = ("multiple_choice", "classification", "generation", "chat", "preference", "text")
TYPE_FIELDS = {
    "multiple_choice": ("question", "choices", "answer"),
    "classification": ("text", "label"),
    "generation": ("prompt", "references", "context"),
    "chat": ("messages",),
    "preference": ("prompt", "chosen", "rejected"),  # a prompt and two replies, the first preferred (DPO, audit)
    "text": ("text",),  # raw documents (continued pretraining)
}
OPTIONAL_FIELDS = {"context"}
ROLES = ("system", "user", "assistant")

DEFAULT_TEMPLATES = {
    "multiple_choice": "Question: {question}\nChoices: {choices}\nAnswer:",
    "classification": "{text}\n\nClassify the text above as one of: {choices}.\nLabel:",
    "generation": "{context}\n\n{prompt}",  # leading blank lines are dropped when there is no context
    "chat": None,
    "preference": "{prompt}",
    "text": None,
}
BUILTIN_DIR = Path(__file__).parent / "builtin"
# what the renderer fills in: {{ and }} (literal braces) and {name}; check_template allows nothing else
PLACEHOLDER = re.compile(r"\{\{|\}\}|\{(\w+)\}")


@dataclass
class Item:
    id: str
    type: str
    fields: dict  # the row's values after column mapping, plus any extra columns
    choices: list[str] | None = None
    answer: int | None = None
    references: list[str] | None = None
    context: str | None = None
    messages: list[dict] | None = None
    source: str = ""  # "path:line"


class ItemList(list):
    """load_items' answer: the items, and the sources ("path:line") of the rows it skipped (`skipped`): preference
    pairs whose two replies are the same text, which carry no preference to learn or to measure."""

    skipped: list[str]

    def __init__(self, items=(), skipped=()):
        super().__init__(items)
        self.skipped = list(skipped)


@dataclass
class TaskSpec:
    name: str
    type: str
    data: str | list[str] | dict[str, str | list[str]]
    description: str = ""
    split_field: str | None = None
    split_ratios: dict[str, float] | None = None
    stratify_by: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    labels: list[str] | None = None
    template: str | None = None
    paraphrases: list[str] = field(default_factory=list)
    system: str | None = None
    chat_template: bool = True
    fewshot: int = 0
    seed: int = 0
    eval_split: str = "test"
    choice_prefix: str = " "
    target: str | None = None
    max_new_tokens: int = 64
    stop: list[str] = field(default_factory=lambda: ["\n\n"])
    # not YAML keys: where the spec came from and what its relative paths are relative to
    base_dir: Path = field(default_factory=Path.cwd, repr=False)
    path: str | None = None

    def column(self, task_field: str) -> str:
        """The data column that holds `task_field`."""
        return self.fields.get(task_field, task_field)


SPEC_KEYS = tuple(f.name for f in dataclasses.fields(TaskSpec) if f.name not in ("base_dir", "path"))


# ---------------------------------------------------------------- specs


def list_builtin_tasks() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*/*.yaml"))


def load_task(spec: str | Path | dict | TaskSpec) -> TaskSpec:
    """A TaskSpec from a YAML path, a dict, a built-in task name or a bare data file (type inferred)."""
    if isinstance(spec, TaskSpec):
        return spec
    if isinstance(spec, dict):
        return spec_from_dict(spec)
    path = Path(spec)
    if path.suffix.lower() in (".yaml", ".yml"):
        return _load_yaml(path)
    if path.suffix.lower() in DATA_SUFFIXES:
        return _spec_for_data_file(path)
    builtin = {p.stem: p for p in BUILTIN_DIR.glob("*/*.yaml")}
    if str(spec) in builtin:
        return _load_yaml(builtin[str(spec)])
    raise DataError(f"no task file or built-in task named '{spec}'"
                    + suggest(spec, builtin, f"; built-in tasks: {', '.join(sorted(builtin))}"))


def _load_yaml(path: Path) -> TaskSpec:
    if not path.is_file():
        raise DataError("task file not found", path)
    raw = read_yaml(path)  # a syntax error names the file and the line
    if not isinstance(raw, dict):
        raise DataError("a task spec must be a YAML mapping of keys to values", path)
    raw.setdefault("name", path.stem)
    try:
        return spec_from_dict(raw, path=path)
    except DataError as e:  # a bad value of a key: name the key's line too
        line = key_lines(path).get(e.field) if e.field and e.line is None else None
        if line is None:
            raise
        raise DataError(e.detail, e.path, line, e.field) from None


def _spec_for_data_file(path: Path) -> TaskSpec:
    rows = read_source(path.name, path.parent)
    columns = set().union(*(r.values for r in rows))
    if "messages" in columns:
        task_type = "chat"
    elif {"prompt", "chosen", "rejected"} <= columns:
        task_type = "preference"
    elif {"question", "choices", "answer"} <= columns:
        task_type = "multiple_choice"
    elif {"text", "label"} <= columns:
        task_type = "classification"
    elif {"prompt", "references"} <= columns:
        task_type = "generation"
    elif "text" in columns:
        task_type = "text"
    else:
        raise DataError(f"cannot tell the task type from the columns ({', '.join(sorted(columns))}): expected "
                        "question/choices/answer, text/label, prompt/references, prompt/chosen/rejected, text "
                        "or messages; write a task "
                        "YAML with `fields:` mapping your columns", path)
    return spec_from_dict({"name": path.stem, "type": task_type, "data": path.name},
                          base_dir=path.parent, path=path)


def spec_from_dict(raw: dict, path: str | Path | None = None, base_dir: str | Path | None = None) -> TaskSpec:
    """Validate a spec mapping: unknown keys and wrong types raise DataError naming the key."""
    where = str(path) if path is not None else "task spec"
    for key in raw:
        if key not in SPEC_KEYS:
            raise DataError(f"unknown key '{key}'" + suggest(key, SPEC_KEYS, f"; valid keys: {', '.join(SPEC_KEYS)}"),
                            where)
    for key in ("type", "data"):
        if raw.get(key) is None:
            raise DataError(f"missing key '{key}'", where)

    def bad(key, expected):
        value = raw[key]
        raise DataError(f"'{key}' must be {expected}, got {type(value).__name__} {value!r}", where, field=key)

    def is_str_list(v):
        return isinstance(v, list) and len(v) > 0 and all(isinstance(x, str) for x in v)

    def is_source(v):
        return isinstance(v, (str, os.PathLike)) or is_str_list(v)

    kw = {}
    for key, value in raw.items():
        if value is None and key not in ("type", "data", "name"):
            continue  # an explicit null keeps the default
        if key in ("name", "description", "split_field", "stratify_by", "template", "system", "eval_split",
                   "choice_prefix", "target"):
            if not isinstance(value, str):
                bad(key, "a string")
            if key == "template":
                check_template(value, where)
        elif key == "type":
            if value not in TASK_TYPES:
                raise DataError(f"'type' must be one of {', '.join(TASK_TYPES)}, got {value!r}"
                                + suggest(value, TASK_TYPES), where, field="type")
        elif key == "data":
            if isinstance(value, dict):
                if not value or not all(isinstance(k, str) and is_source(v) for k, v in value.items()):
                    bad(key, "a mapping of split names to sources (a path, a list of paths or hf:name)")
                value = {k: _source(v) for k, v in value.items()}
            elif is_source(value):
                value = _source(value)
            else:
                bad(key, "a path, a list of paths, hf:name, or a mapping of split names to those")
        elif key in ("chat_template",):
            if not isinstance(value, bool):
                bad(key, "true or false")
        elif key in ("fewshot", "seed", "max_new_tokens"):
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if key == "max_new_tokens" else 0):
                bad(key, "a positive integer" if key == "max_new_tokens" else "a non-negative integer")
        elif key in ("paraphrases", "stop"):
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
                bad(key, "a list of strings")
            if key == "paraphrases":
                for i, p in enumerate(value):
                    check_template(p, where, key, f"paraphrase {i}: ")
        elif key == "labels":
            if not isinstance(value, list) or len(value) < 2 or not all(isinstance(x, (str, int)) for x in value):
                bad(key, "a list of at least 2 labels")
            value = [str(x).strip() for x in value]
            if len(set(value)) != len(value):
                raise DataError("'labels' has duplicates", where, field="labels")
        elif key == "fields":
            if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
                bad(key, "a mapping of task fields to column names")
        elif key == "split_ratios":
            if (not isinstance(value, dict) or not value or not all(
                    isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
                    for k, v in value.items())):
                bad(key, "a mapping of split names to fractions, e.g. {train: 0.8, test: 0.2}")
            if not math.isclose(sum(value.values()), 1.0, abs_tol=1e-6):
                raise DataError(f"'split_ratios' must sum to 1, got {sum(value.values()):g}", where,
                                field="split_ratios")
            value = {k: float(v) for k, v in value.items()}
        kw[key] = value

    valid_fields = TYPE_FIELDS[kw["type"]] + ("id",)
    for f in kw.get("fields", {}):
        if f not in valid_fields:
            raise DataError(f"'{f}' is not a field of {kw['type']} tasks"
                            + suggest(f, valid_fields, f" (fields: {', '.join(valid_fields)})"), where, field="fields")
    if isinstance(kw["data"], dict) and (kw.get("split_field") or kw.get("split_ratios")):
        raise DataError("give either one source per split or split_field/split_ratios, not both", where,
                        field="data")
    if kw.get("split_field") and kw.get("split_ratios"):
        raise DataError("give split_field or split_ratios, not both", where, field="split_ratios")
    kw.setdefault("name", Path(path).stem if path else "task")
    kw.setdefault("template", DEFAULT_TEMPLATES[kw["type"]])
    if base_dir is None:
        base_dir = Path(path).parent if path is not None else Path.cwd()
    return TaskSpec(**kw, base_dir=Path(base_dir), path=str(path) if path is not None else None)


def check_template(template: str, where, key: str = "template", what: str = "") -> list[str]:
    """The placeholder names of a template. Only plain ``{field}`` placeholders and ``{{``/``}}`` are allowed:
    anything else (``{text``, ``{0}``, ``{text!r}``, ``{a.b}``) would reach the model verbatim, so it is a
    DataError naming the spec and the key."""
    def fail(problem) -> DataError:
        return DataError(f"{what}{problem}; only plain {{field}} placeholders are allowed (write {{{{ and }}}} for "
                         "literal braces)", where, field=key)

    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise fail("a '}' with no '{' before it" if "Single '}'" in str(e) else "a '{' that is never closed") from None
    names = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
        if conversion or spec or not re.fullmatch(r"\w+", name):
            raise fail(f"malformed placeholder {shown}")
        if name.isdigit():
            raise fail(f"positional placeholder {shown} (name a field)")
        names.append(name)
    rest = PLACEHOLDER.sub("", template)  # what Formatter accepts but the renderer would not fill: "{text:}"
    if "{" in rest or "}" in rest:
        bad = re.search(r"\{[^{}]*\}?|\}", rest).group(0)
        raise fail(f"malformed placeholder {bad}")
    return names


def template_names(item: Item) -> set[str]:
    """The placeholders a template can use for this item: what render.instruction fills in."""
    return set(item.fields) | {"context"} | ({"choices", "choices_lettered"} if item.choices is not None else set())


def _check_placeholders(spec: TaskSpec, items: list[Item]) -> None:
    """Every placeholder of the template and the paraphrases names a field of every item: reported when the
    items are read, before a model is asked for anything."""
    where = spec.path or spec.name
    templates = [("template", "", spec.template)] + [("paraphrases", f"paraphrase {i}: ", p)
                                                    for i, p in enumerate(spec.paraphrases)]
    needed = [(key, what, check_template(t, where, key, what)) for key, what, t in templates if t is not None]
    for item in items:
        if item.messages is not None:  # chat items are their own prompt
            continue
        have = template_names(item)
        for key, what, names in needed:
            missing = [n for n in names if n not in have]
            if missing:
                raise DataError(f"{what}template placeholder {{{missing[0]}}} is not a field of the item at "
                                f"{item.source} (available: {', '.join(sorted(have))})", where, field=key)


def _source(value):
    return [str(v) for v in value] if isinstance(value, list) else str(value)


# ---------------------------------------------------------------- items


def load_items(spec: str | Path | dict | TaskSpec, split: str) -> ItemList:
    """The validated items of one split; every problem is a DataError naming file, line and field. A preference
    pair whose chosen and rejected replies are the same text is skipped with one warning line (and listed in the
    answer's `skipped`)."""
    spec = load_task(spec)
    cache: dict = {}

    def read(source, hf_split):
        key = (repr(source), hf_split)
        if key not in cache:
            cache[key] = read_source(source, spec.base_dir, hf_split)
        return cache[key]

    rows, id_prefix = _split_rows(spec, split, read)
    labels = _label_set(spec, split, read) if spec.type == "classification" else None
    items = [make_item(spec, row, f"{id_prefix}-{n}", labels) for n, row in enumerate(rows)]
    seen = {}
    for item, row in zip(items, rows):
        if item.id in seen:
            raise DataError(f"duplicate id '{item.id}' (also at {seen[item.id]})", row.path, row.line,
                            spec.column("id"))
        seen[item.id] = item.source
    _check_placeholders(spec, items)
    skipped = [i.source for i in items if i.type == "preference" and _same_reply(i)]
    if skipped:
        from ..progress import log

        log.warning("%s: %d of %d preference pair(s) have the same chosen and rejected reply and are skipped "
                    "(first at %s)", spec.path or spec.name, len(skipped), len(items), skipped[0])
        items = [i for i in items if not (i.type == "preference" and _same_reply(i))]
        if not items:
            raise DataError(f"split '{split}': every preference pair has the same chosen and rejected reply",
                            spec.path or spec.name)
    return ItemList(items, skipped)


def _same_reply(item: Item) -> bool:
    return " ".join(item.fields["chosen"].split()) == " ".join(item.fields["rejected"].split())



def load_checked_tasks(names) -> list[TaskSpec]:
    """The task specs, each with its eval split's rows and template fields checked, so a bad row is named by
    file and line before any model loads or any tuning starts, not minutes later."""
    specs = [load_task(t) for t in names]
    for spec in specs:
        load_items(spec, spec.eval_split)
    return specs

def _split_rows(spec: TaskSpec, split: str, read) -> tuple[list[Row], str]:
    where = spec.path or spec.name
    if isinstance(spec.data, dict):
        if split not in spec.data:
            raise DataError(f"unknown split '{split}'; this task has: {', '.join(spec.data)}", where)
        rows, prefix = read(spec.data[split], split), split
    elif spec.split_field:
        rows, found = [], set()
        for row in read(spec.data, "train"):
            value = row.values.get(spec.split_field)
            if value is None:
                raise DataError("missing (split_field)", row.path, row.line, spec.split_field)
            found.add(str(value))
            if str(value) == split:
                rows.append(row)
        if split not in found:
            raise DataError(f"unknown split '{split}'; the data has: {', '.join(sorted(found))}", where)
        prefix = split
    elif spec.split_ratios:
        if split not in spec.split_ratios:
            raise DataError(f"unknown split '{split}'; this task has: {', '.join(spec.split_ratios)}", where)
        rows, prefix = ratio_split(spec, read(spec.data, "train"))[split], split
    else:
        single_hf = isinstance(spec.data, str) and is_hf(spec.data)
        rows, prefix = read(spec.data, split), (split if single_hf else "all")
    if not rows:
        raise DataError(f"split '{split}' contains no items", where)
    return rows, prefix


def ratio_split(spec: TaskSpec, rows: list[Row]) -> dict[str, list[Row]]:
    """Seeded split by `spec.split_ratios`, stratified by `spec.stratify_by` (or the label column)."""
    key = spec.stratify_by or (spec.column("label") if spec.type == "classification" else None)
    id_col = spec.column("id")
    strata: dict[str, list[tuple]] = defaultdict(list)
    for index, row in enumerate(rows):
        if key is not None and row.values.get(key) is None:
            raise DataError("missing (needed to stratify the split)", row.path, row.line, key)
        stratum = str(row.values[key]).strip() if key is not None else ""
        row_id = row.values.get(id_col)
        strata[stratum].append((str(row_id) if row_id is not None else "", index, row))
    out: dict[str, list[tuple]] = {s: [] for s in spec.split_ratios}
    for stratum, members in strata.items():
        members.sort(key=lambda m: m[:2])
        random.Random(f"{spec.seed}:{stratum}").shuffle(members)
        start = 0
        for split, count in zip(spec.split_ratios, _allocate(len(members), list(spec.split_ratios.values()))):
            out[split].extend(members[start:start + count])
            start += count
    # each split keeps the data's order
    return {s: [m[2] for m in sorted(ms, key=lambda m: m[1])] for s, ms in out.items()}


def _allocate(n: int, ratios: list[float]) -> list[int]:
    """Split n into integer counts proportional to ratios (largest remainder; ties to the earlier split)."""
    exact = [n * r for r in ratios]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(ratios)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _label_set(spec: TaskSpec, split: str, read) -> list[str]:
    if spec.labels:
        return list(spec.labels)
    if isinstance(spec.data, dict):
        rows = [r for s, src in spec.data.items() for r in read(src, s)]
    elif spec.split_field or spec.split_ratios:
        rows = read(spec.data, "train")
    else:
        rows = read(spec.data, split)
    col = spec.column("label")
    return sorted({str(r.values[col]).strip() for r in rows if r.values.get(col) is not None})


def make_item(spec: TaskSpec, row: Row, default_id: str, labels: list[str] | None = None) -> Item:
    """Validate one row and build its Item (labels: the label set, for classification)."""
    names = TYPE_FIELDS[spec.type]
    columns = {f: spec.column(f) for f in names}

    def fail(message, f):
        raise DataError(message, row.path, row.line, columns.get(f, f))

    values = row.values
    fields = {f: values.get(col) for f, col in columns.items()}
    for f in names:
        if fields[f] is None and f not in OPTIONAL_FIELDS:
            fail("missing", f)
    used = set(columns.values())
    fields.update({k: v for k, v in values.items() if k not in used and k not in fields})
    raw_id = values.get(spec.column("id"))
    item = Item(id=str(raw_id) if raw_id is not None else default_id, type=spec.type, fields=fields,
                source=row.source)

    if spec.type == "multiple_choice":
        _text(fields["question"], "question", fail)
        choices = _as_list(fields["choices"], split_bars=True)
        if not isinstance(choices, list):
            fail(f"must be a list of choices, got {type(choices).__name__}", "choices")
        if len(choices) < 2:
            fail(f"needs at least 2 choices, got {len(choices)}", "choices")
        for i, c in enumerate(choices):
            if isinstance(c, bool) or not isinstance(c, (str, int, float)):
                fail(f"choice {i} must be text, got {type(c).__name__}", "choices")
        choices = [str(c) for c in choices]
        answer = answer_index(fields["answer"], choices)
        if answer is None:
            fail(f"answer {fields['answer']!r} is not among the choices {choices} (give an index "
                 f"0..{len(choices) - 1}, a letter A..{chr(64 + min(len(choices), 26))} or a choice's text)",
                 "answer")
        fields["choices"] = item.choices = choices
        item.answer = answer
    elif spec.type == "classification":
        _text(fields["text"], "text", fail)
        label = str(fields["label"]).strip()
        if label not in labels:
            fail(f"label '{label}' is not one of the task's labels: {', '.join(labels)}", "label")
        item.choices, item.answer = list(labels), labels.index(label)
    elif spec.type == "generation":
        _text(fields["prompt"], "prompt", fail)
        refs = _as_list(fields["references"])
        refs = [refs] if isinstance(refs, str) else refs
        if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
            fail("must be a string or a list of strings", "references")
        if not any(r.strip() for r in refs):
            fail("empty: give at least one non-empty reference", "references")
        if fields.get("context") is not None and not isinstance(fields["context"], str):
            fail("must be a string", "context")
        fields["references"] = item.references = refs
        item.context = fields.get("context") or None
    elif spec.type == "preference":
        for f in ("prompt", "chosen", "rejected"):
            _text(fields[f], f, fail)
    elif spec.type == "text":
        _text(fields["text"], "text", fail)
    else:
        item.messages = _messages(_as_list(fields["messages"]), fail)
        fields["messages"] = item.messages
    return item


def answer_index(answer, choices: list[str]) -> int | None:
    """Normalise an answer (index, choice text, letter, or digit string) to an index, None if invalid."""
    if isinstance(answer, bool):
        return None
    if isinstance(answer, float) and answer.is_integer():
        answer = int(answer)
    if isinstance(answer, int):
        return answer if 0 <= answer < len(choices) else None
    if not isinstance(answer, str):
        return None
    for text in (answer, answer.strip()):
        if text in choices:
            return choices.index(text)
    s = answer.strip()
    if len(s) == 1 and s.isascii() and s.isalpha():
        i = ord(s.upper()) - ord("A")
        return i if i < len(choices) else None
    if s.isdigit():
        return answer_index(int(s), choices)
    return None


def _text(value, f, fail):
    if not isinstance(value, str):
        fail(f"must be a string, got {type(value).__name__}", f)
    if not value.strip():
        fail("empty", f)


def _as_list(value, split_bars: bool = False):
    """Lists stored as text (CSV cells): a JSON list, or "a|b|c" when split_bars."""
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("["):
            try:
                parsed = json.loads(s)
                if isinstance(parsed, list):
                    return parsed
            except ValueError:
                pass
        if split_bars:
            return [part.strip() for part in value.split("|")]
    return value


def _messages(messages, fail) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        fail("must be a non-empty list of {role, content} messages", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            fail(f"message {i} must be an object with a string 'content'", "messages")
        if m.get("role") not in ROLES:
            fail(f"message {i}: role {m.get('role')!r} is not one of {', '.join(ROLES)}", "messages")
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "assistant":
        fail("the last message must be the assistant's (it is the training target)", "messages")
    if not any(m["role"] == "user" for m in out):
        fail("needs at least one user message", "messages")
    return out


def fewshot_examples(spec: TaskSpec, items: list[Item], k: int, seed: int | None = None,
                     exclude_id: str | None = None) -> list[Item]:
    """k examples drawn from `items` (the train split) with `seed`; never the item `exclude_id`.

    The draw does not depend on the order of `items`, and excluding an item only replaces that item,
    so every evaluated item sees the same shots except the one that is itself a shot.
    """
    if k <= 0:
        return []
    seed = spec.seed if seed is None else seed
    pool = sorted(items, key=lambda it: it.id)
    if len([it for it in pool if it.id != exclude_id]) < k:
        raise DataError(f"fewshot is {k} but the train split has only "
                        f"{len([it for it in pool if it.id != exclude_id])} other items", spec.path or spec.name,
                        field="fewshot")
    drawn = random.Random(seed).sample(pool, min(k + 1, len(pool)))
    return [it for it in drawn if it.id != exclude_id][:k]
