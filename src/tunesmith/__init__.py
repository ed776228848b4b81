"""tunesmith: fine-tune a language model on your own data, prove it, ship it."""

__version__ = "0.1.0"
