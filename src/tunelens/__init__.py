"""tunelens: fine-tune a language model, then show what the fine-tune bought and what it cost."""

__version__ = "0.1.0"
