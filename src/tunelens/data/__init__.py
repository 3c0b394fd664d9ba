"""Task data: specs (YAML), readers, validated items, and rendering items into prompts."""

from .render import answer_text, continuations, instruction, render_prompt, to_chat
from .tasks import (
    TASK_TYPES,
    Item,
    TaskSpec,
    fewshot_examples,
    list_builtin_tasks,
    load_checked_tasks,
    load_items,
    load_task,
)

__all__ = [
    "TASK_TYPES",
    "Item",
    "TaskSpec",
    "answer_text",
    "continuations",
    "fewshot_examples",
    "instruction",
    "list_builtin_tasks",
    "load_checked_tasks",
    "load_items",
    "load_task",
    "render_prompt",
    "to_chat",
]
