"""Silence third-party output that says nothing to a tunesmith user.

bitsandbytes announces on every import that it could not fetch an optional kernel from a
hub (tunesmith never fetches anything at run time), and peft triggers a deprecation notice
inside transformers: both are muted as soon as `tunesmith` is imported, before either
library loads. transformers' own progress bars while loading weights are turned off by the
entry points (CLI, demo), which print progress of their own.
"""

from __future__ import annotations

import logging
import warnings


def mute_import_notices() -> None:
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    warnings.filterwarnings(
        "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
    )


def quiet_third_party() -> None:
    import transformers

    mute_import_notices()
    transformers.utils.logging.disable_progress_bar()
