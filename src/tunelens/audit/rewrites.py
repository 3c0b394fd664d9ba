"""Generic instruction rewrites: instruction variants for a choice task that ships no paraphrases of its own.

The robustness suite needs several wordings of one task's instruction. A task spec may list its own
(``paraphrases:``); when it does not, the variants are built here from the task's template by a fixed set of
generic rewrites. They are not written for the task and say so: every variant is named ``generated:<rewrite>``.

The rewrites (each applied to the template's text, never to an item):

- ``generated:reworded`` — the lead-in reworded: the instruction lines before the input are replaced by a fixed
  lead-in for the task type ("Choose the label that fits the text below." / "Answer the multiple-choice question
  below."); with no such lines the lead-in is put in front of the template.
- ``generated:format-line`` — the answer-format line changed: the template's own format line (such as "Answer
  with the topic only.") replaced, or a new one added before the answer cue: "Answer with the label only." (the option,
  for multiple choice), or "Reply with one of: {choices}." when the template already asks for the label only.
- ``generated:choices-<layout>`` — only when the template shows the choices (``{choices}`` or
  ``{choices_lettered}``): up to two other layouts of the same list, in this order of preference: ``lettered``
  ("A. x" lines, ``{choices_lettered}``), ``bullets`` ("- x" lines), ``numbered`` ("1. x" lines), ``comma``
  (``{choices}``). Bullets and numbers are written into the template, so they exist only for a fixed label set
  (classification: the same labels for every item).
- ``generated:order-swapped`` — the input and the instruction swapped: the lines holding the item's fields
  first and the instructions after them, or the other way round (the answer cue stays last).
- ``generated:input-labelled`` — the input's label changed: a bare field line (``{text}``) gets its field's name
  as a label ("Text: {text}"), a labelled one ("Message: {text}") the label "Input:" instead.
- ``generated:polite`` — a polite register: a greeting and "could you please" before, "Thank you!" after.
- ``generated:terse`` — a terse register: the instruction-only lines and the lead words before a field dropped
  (a short label such as "Message:" stays), leaving the fields, the choice list behind "Options:" and the answer cue ("Label:" / "Answer:" when the template has none).
- ``generated:single-line`` — the layout flattened: every line of the template joined by single spaces.

Every variant keeps every placeholder of the template other than the choice list's (``{text}``, ``{question}``,
``{context}``, extra columns), shows the choices when the template did, passes ``tasks.check_template`` and is
different from the template and the other variants (a rewrite that changes nothing, or repeats another, is
dropped). There is no randomness: the same template gives the same variants.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..data.tasks import PLACEHOLDER, check_template

CHOICE_PLACEHOLDERS = ("choices", "choices_lettered")
PREFIX = "generated:"
NOTE = "instruction variants generated from generic rewrites (not written for this task)"
REWRITES = ("reworded", "format-line", "choices-lettered", "choices-bullets", "choices-numbered", "choices-comma",
            "order-swapped", "input-labelled", "polite", "terse", "single-line")
MAX_LAYOUTS = 2  # choice-list layouts per task (each variant costs two model passes)

LEAD_IN = {
    "classification": "Choose the label that fits the text below.",
    "multiple_choice": "Answer the multiple-choice question below.",
}
FORMAT_ONLY = {"classification": "Answer with the label only.", "multiple_choice": "Answer with the option only."}
FORMAT_ONE_OF = "Reply with one of: {choices}."
CUE = {"classification": "Label:", "multiple_choice": "Answer:"}
_FORMAT_WORDS = re.compile(r"\b(answer|reply|respond|label|output|only|one of|choose|pick)\b", re.I)


@dataclass(frozen=True)
class Variant:
    name: str  # "generated:<rewrite>"
    template: str


def names(template: str) -> list[str]:
    """The placeholder names of a template, in order (``{{``/``}}`` are text)."""
    return [m.group(1) for m in PLACEHOLDER.finditer(template) if m.group(1) is not None]


def fields_of(template: str) -> set[str]:
    """The placeholders a variant must keep: every one but the choice list's."""
    return {n for n in names(template) if n not in CHOICE_PLACEHOLDERS}


def shows_choices(template: str) -> bool:
    return any(n in CHOICE_PLACEHOLDERS for n in names(template))


def keeps_fields(original: str, variant: str, labels: list[str] | None = None) -> bool:
    """Whether `variant` keeps every field placeholder of `original` and shows the choices when it did (as a
    placeholder, or as the fixed label set written out)."""
    if not fields_of(original) <= fields_of(variant):
        return False
    if shows_choices(original) and not shows_choices(variant):
        text = PLACEHOLDER.sub(lambda m: m.group(0)[0] if m.group(1) is None else "", variant)
        return bool(labels) and all(_escape(lab) in variant or lab in text for lab in labels)
    return True


def generate(template: str, task_type: str, labels: list[str] | None = None) -> list[Variant]:
    """The generic variants of a choice task's template (see the module docstring), in REWRITES order.

    `labels`: the task's label set when it is the same for every item (classification); it enables the
    written-out bullet and numbered layouts of the choice list."""
    if task_type not in LEAD_IN:
        raise ValueError(f"instruction variants are generated for choice tasks only, not {task_type}")
    t = _Template.parse(template)
    out: list[Variant] = []
    seen = {template.strip("\n")}

    def add(rewrite: str, text: str | None):
        if text is None:
            return
        text = text.strip("\n")
        if text in seen or not keeps_fields(template, text, labels):
            return
        check_template(text, "generated variant", what=f"{PREFIX}{rewrite}: ")
        seen.add(text)
        out.append(Variant(PREFIX + rewrite, text))

    add("reworded", t.reworded(task_type))
    add("format-line", t.format_line(task_type))
    layouts = 0
    for layout in ("lettered", "bullets", "numbered", "comma"):
        if layouts < MAX_LAYOUTS:
            before = len(out)
            add(f"choices-{layout}", t.layout(layout, labels))
            layouts += len(out) > before
    add("order-swapped", t.swapped())
    add("input-labelled", t.labelled())
    add("polite", t.polite())
    add("terse", t.terse(task_type))
    add("single-line", t.single_line())
    return out


# ---------------------------------------------------------------- the template as lines


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _kind(line: str) -> str:
    """'input' (holds an item field), 'choices' (holds only the choice list), 'text' (no placeholder), 'blank'."""
    if not line.strip():
        return "blank"
    found = names(line)
    if any(n not in CHOICE_PLACEHOLDERS for n in found):
        return "input"
    return "choices" if found else "text"


def _first_field(line: str) -> int:
    """Where the first placeholder of a line starts (``{{`` is text)."""
    return next((m.start() for m in PLACEHOLDER.finditer(line) if m.group(1) is not None), len(line))


def _title(field: str) -> str:
    return field.replace("_", " ").capitalize()


def _flip_direction(line: str) -> str:
    """'above' <-> 'below' in a line without fields (its instruction now stands on the other side of the input)."""
    return re.sub(r"\b(above|below)\b", lambda m: {"above": "below", "below": "above"}[m.group(1)], line)


def _join(groups: list[list[str]]) -> str:
    """Non-empty groups of lines, a blank line between groups."""
    return "\n\n".join("\n".join(g) for g in groups if g)


@dataclass
class _Template:
    body: list[str]  # the lines before the format line and the cue
    fmt: str | None  # the answer-format instruction line ("Answer with the topic only.")
    cue: str | None  # the short answer cue the model continues after ("Label:", "Answer:")

    @classmethod
    def parse(cls, template: str) -> "_Template":
        lines = template.strip("\n").split("\n")
        cue = fmt = None
        if len(lines) > 1 and _kind(lines[-1]) == "text" and lines[-1].rstrip().endswith(":") \
                and len(lines[-1].split()) <= 3:
            cue = lines.pop()
        if len(lines) > 1 and _kind(lines[-1]) == "text" and len(lines[-1]) <= 100 \
                and _FORMAT_WORDS.search(lines[-1]):
            fmt = lines.pop()
        while lines and not lines[-1].strip():
            lines.pop()
        return cls(lines, fmt, cue)

    def _tail(self, fmt: str | None = None) -> list[str]:
        fmt = self.fmt if fmt is None else fmt
        return [x for x in (fmt, self.cue) if x]

    def _first_input(self) -> int:
        return next((i for i, x in enumerate(self.body) if _kind(x) == "input"), len(self.body))

    def text(self, body: list[str] | None = None, fmt: str | None = None) -> str:
        body = self.body if body is None else body
        tail = self._tail(fmt)
        return "\n".join(body) + ("\n" + "\n".join(tail) if tail and body else "\n".join(tail))

    def reworded(self, task_type: str) -> str:
        i = self._first_input()
        lead = [x for x in self.body[:i] if _kind(x) == "text"]
        rest = [x for x in self.body[:i] if _kind(x) not in ("text", "blank")] + self.body[i:]
        # a lead-in sentence on the input's own line ("Animal? {text}") is the lead-in too
        if not lead and i < len(self.body):
            line = self.body[i]
            head = line[:_first_field(line)]
            if head.strip() and not head.rstrip().endswith(":"):
                rest = rest[:]
                rest[rest.index(line)] = line[len(head):]
        return _join([[LEAD_IN[task_type]], rest]) + ("\n" + "\n".join(self._tail()) if self._tail() else "")

    def format_line(self, task_type: str) -> str:
        new = FORMAT_ONLY[task_type]
        if self.fmt and self.fmt.strip().lower() == new.lower():
            new = FORMAT_ONE_OF
        return self.text(fmt=new)

    def layout(self, layout: str, labels: list[str] | None) -> str | None:
        if layout in ("bullets", "numbered") and not labels:
            return None
        body, changed = [], False
        for line in self.body:
            m = re.search(r"\{(choices|choices_lettered)\}", line)
            if m is None or changed:
                body.append(line)
                continue
            changed = True
            current = "lettered" if m.group(1) == "choices_lettered" else "comma"
            if layout == current:
                return None
            head, tail = line[:m.start()].rstrip(), line[m.end():]
            if layout == "comma":  # a list inline: the head's own words before it
                body.append(f"{head} {{choices}}{tail}".lstrip() if head else "{choices}" + tail)
                continue
            if layout == "lettered":
                block = ["{choices_lettered}"]
            elif layout == "bullets":
                block = [f"- {_escape(x)}" for x in labels]
            else:
                block = [f"{k}. {_escape(x)}" for k, x in enumerate(labels, 1)]
            if head:
                body.append(head if head.endswith(":") else head.rstrip(" .,;") + ":")
            body += block
            if tail.strip(" .,;"):  # words after the list go on their own line
                body.append(tail.strip())
        return self.text(body) if changed else None

    def swapped(self) -> str | None:
        idx_in = [i for i, x in enumerate(self.body) if _kind(x) == "input"]
        idx_other = [i for i, x in enumerate(self.body) if _kind(x) in ("text", "choices")]
        if not idx_in:
            return None
        inputs, others = [self.body[i] for i in idx_in], [self.body[i] for i in idx_other]
        if others:
            instruction_first = idx_other[0] < idx_in[0]
        else:  # one line "Animal? {text}": its lead words go after the input
            line = inputs[0]
            head = line[:_first_field(line)]
            if not head.strip() or head.rstrip().endswith(":"):  # "Message: {text}" is a label, not an instruction
                return None
            others, inputs, instruction_first = [head.strip()], [line[len(head):]] + inputs[1:], True
        others = [_flip_direction(x) for x in others]  # "the text above" now stands below it
        groups = [inputs, others] if instruction_first else [others, inputs]
        tail = self._tail()
        return _join(groups) + ("\n" + "\n".join(tail) if tail else "")

    def labelled(self) -> str:
        body = []
        for line in self.body:
            bare = re.fullmatch(r"\{(\w+)\}", line.strip())
            named = re.fullmatch(r"([A-Za-z][\w ]{0,29}):\s*\{(\w+)\}", line.strip())
            if bare and bare.group(1) not in ("context",) + CHOICE_PLACEHOLDERS:  # an empty context keeps no label
                line = f"{_title(bare.group(1))}: {line.strip()}"
            elif named and named.group(2) not in CHOICE_PLACEHOLDERS:
                label = "Input" if named.group(1).lower() != "input" else _title(named.group(2))
                line = f"{label}: {{{named.group(2)}}}"
            body.append(line)
        return self.text(body)

    def polite(self) -> str:
        body = ["Hello! Could you please help me with the following?", ""] + self.body + ["", "Thank you!"]
        return self.text(body)

    def terse(self, task_type: str) -> str:
        body = []
        for x in self.body:
            if _kind(x) == "input":  # lead words before the first field go, a short label stays
                head = x[:_first_field(x)]
                short_label = head.rstrip().endswith(":") and len(head.split()) <= 2
                body.append(x if short_label or not head.strip() else x[len(head):])
            elif _kind(x) == "choices":  # the list alone, behind one word
                body += [f"Options: {{{n}}}" if n == "choices" else "Options:\n{choices_lettered}" for n in names(x)]
        return "\n".join(body + [self.cue or CUE[task_type]])

    def single_line(self) -> str:
        return " ".join(x.strip() for x in self.body + self._tail() if x.strip())
