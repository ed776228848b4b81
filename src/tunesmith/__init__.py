"""tunesmith: fine-tune a language model on your own data, prove it, ship it."""

from tunesmith.quiet import mute_import_notices

__version__ = "0.1.0"

mute_import_notices()
