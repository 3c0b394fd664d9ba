"""Turn items into the text a model sees (prompts), the answers it is scored on, and SFT chats.

Templates use ``{name}`` placeholders: the task fields (``{question}``, ``{text}``, ``{prompt}``,
``{context}``...), any extra column by its own name, ``{choices}`` (comma-joined) and
``{choices_lettered}`` ("A. x\\nB. y"). ``{{`` and ``}}`` are literal braces; any other brace is an error
when the spec is loaded (tasks.check_template), and a placeholder naming no field of the items when they are
read. Leading and trailing newlines of the rendered instruction are dropped.

For multiple-choice and classification the scored continuations are always the choice *texts*,
also when the template shows lettered choices.

Without a chat template (``chat_template: false``, or no tokenizer given) a few-shot prompt is
``<instruction><choice_prefix><answer>\\n\\n`` per shot followed by the item's instruction, so a
shot looks exactly like the item plus its scored continuation. With a chat template the shots are
user/assistant turn pairs and the prompt ends with the generation prompt of the assistant turn.
"""

from __future__ import annotations

import re

from ..errors import DataError, ModelError, TunelensError
from .tasks import PLACEHOLDER, Item, TaskSpec

CHOICE_TYPES = ("multiple_choice", "classification")


def instruction(spec: TaskSpec, item: Item, template: str | None = None) -> str:
    """The item's instruction: the template filled with its fields."""
    template = template if template is not None else spec.template
    if template is None:
        raise DataError(f"task '{spec.name}' of type {spec.type} has no template", spec.path, field="template")
    values = {k: _text(v) for k, v in item.fields.items()}  # keep in step with tasks.template_names
    values["context"] = item.context or ""
    if item.choices is not None:
        values["choices"] = ", ".join(item.choices)
        values["choices_lettered"] = "\n".join(f"{chr(65 + i)}. {c}" for i, c in enumerate(item.choices))

    def fill(m: re.Match) -> str:
        if m.group(1) is None:
            return m.group(0)[0]
        if m.group(1) not in values:
            raise DataError(f"template placeholder {{{m.group(1)}}} is not a field of this item "
                            f"(available: {', '.join(sorted(values))})", spec.path or spec.name, field="template")
        return values[m.group(1)]

    # strip the template's own outer newlines, not the values': a value may end in "\n" on purpose
    # (a pre-rendered prompt); the left strip drops what an empty leading {context} leaves behind
    return PLACEHOLDER.sub(fill, template.strip("\n")).lstrip("\n")


def answer_text(spec: TaskSpec, item: Item) -> str:
    """The gold target: `spec.target`'s field if set, else the correct choice, first reference, the chosen reply
    of a preference pair, or the chat's final assistant message."""
    if spec.target:
        # the target may name a task field or a column (which mapping turned into a task field)
        key = {col: f for f, col in spec.fields.items()}.get(spec.target, spec.target)
        key = spec.target if spec.target in item.fields else key
        if item.fields.get(key) is None:
            path, _, line = item.source.rpartition(":")
            raise DataError("missing (the task's target)", path or None, int(line) if line.isdigit() else None,
                            spec.target)
        value = item.fields[key]
        return _text(value[0] if isinstance(value, list) and value else value)
    if item.choices is not None:
        return item.choices[item.answer]
    if item.references:
        return item.references[0]
    if item.type == "preference":  # SFT on a preference set learns the chosen replies
        return item.fields["chosen"]
    if item.messages is None:
        raise DataError(f"task '{spec.name}' is a {item.type} task: it has no answer to train or score",
                        spec.path or spec.name)
    return item.messages[-1]["content"]


def continuations(spec: TaskSpec, item: Item) -> list[str]:
    """The strings scored after the prompt: each choice, behind choice_prefix unless a chat template is used."""
    if spec.type not in CHOICE_TYPES:
        raise TunelensError(f"task '{spec.name}' is {spec.type}; continuations exist only for "
                            "multiple_choice and classification")
    prefix = "" if spec.chat_template else spec.choice_prefix
    return [prefix + c for c in item.choices]


def to_chat(spec: TaskSpec, item: Item, shots=(), template: str | None = None) -> list[dict]:
    """Messages for supervised fine-tuning: [system], shot turns, the instruction, the answer."""
    if item.messages is not None:
        return _with_system(spec, list(item.messages))
    turns = _shot_turns(spec, shots, template) + [
        {"role": "user", "content": instruction(spec, item, template)},
        {"role": "assistant", "content": answer_text(spec, item)},
    ]
    return _with_system(spec, turns)


def render_prompt(spec: TaskSpec, item: Item, tokenizer=None, shots=(), template: str | None = None) -> str:
    """The full text the model sees before its answer (see the module docstring)."""
    if spec.chat_template and tokenizer is not None:
        if item.messages is not None:
            own = item.messages[:-1]
            system = own[:1] if own and own[0]["role"] == "system" else []
            turns = system + _shot_turns(spec, shots, template) + own[len(system):]
        else:
            turns = _shot_turns(spec, shots, template) + [{"role": "user", "content": instruction(spec, item, template)}]
        return apply_chat_template(tokenizer, _with_system(spec, turns))
    if item.messages is not None:
        return "\n".join(f"{m['role']}: {m['content']}" for m in item.messages[:-1]) + "\nassistant:"
    blocks = [f"{instruction(spec, s, template)}{spec.choice_prefix}{answer_text(spec, s)}\n\n" for s in shots]
    return "".join(blocks) + instruction(spec, item, template)


def apply_chat_template(tokenizer, messages: list[dict]) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError("the tokenizer has no chat template; set `chat_template: false` in the task spec "
                         "to use plain prompts")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _shot_turns(spec: TaskSpec, shots, template) -> list[dict]:
    turns = []
    for s in shots:
        if s.messages is not None:
            turns += [m for m in s.messages if m["role"] != "system"]
        else:
            turns += [{"role": "user", "content": instruction(spec, s, template)},
                      {"role": "assistant", "content": answer_text(spec, s)}]
    return turns


def _with_system(spec: TaskSpec, turns: list[dict]) -> list[dict]:
    if spec.system and not (turns and turns[0]["role"] == "system"):
        return [{"role": "system", "content": spec.system}] + turns
    return turns


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(_text(v) for v in value)
    return str(value)
