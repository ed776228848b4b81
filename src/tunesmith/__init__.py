"""tunesmith: fine-tune a language model on your own data, prove it, ship it.

Offline by construction: importing tunesmith (which every entry point does first: the CLI,
the Python API, the server) switches the Hugging Face libraries to offline mode before any
of them is imported, whatever ``HF_HUB_OFFLINE`` said, so no run fetches code or weights
behind the user's back. ``TUNESMITH_ALLOW_DOWNLOADS=1`` is the one documented way to let
them reach the network (say, to download a hub model once into the cache).
"""

import os
import sys

ALLOW_DOWNLOADS_ENV = "TUNESMITH_ALLOW_DOWNLOADS"
OFFLINE_ENV_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


def downloads_allowed() -> bool:
    """True only when the user opted in with ``TUNESMITH_ALLOW_DOWNLOADS=1``."""
    return os.environ.get(ALLOW_DOWNLOADS_ENV, "").strip() == "1"


def _enforce_offline() -> None:
    if downloads_allowed():
        return
    for name in OFFLINE_ENV_VARS:
        os.environ[name] = "1"
    # A program that imported huggingface_hub before tunesmith has already read the
    # variable; its constant is what every hub request checks, so it is set as well.
    hub_constants = sys.modules.get("huggingface_hub.constants")
    if hub_constants is not None:
        hub_constants.HF_HUB_OFFLINE = True


_enforce_offline()

from tunesmith.quiet import mute_import_notices  # noqa: E402  (after the offline switch)

__version__ = "0.1.0"

mute_import_notices()
