"""`tunesmith serve`: an OpenAI-compatible server for a base model and its fine-tuned runs.

app.py (routes) · schemas.py (request bodies) · security.py (keys, limits) ·
registry.py (models, one base in memory) · decoding.py (the batching decoder) ·
continuous.py (the running batch) · grouped_lora.py (mixed adapters by row slices) ·
requestlog.py (JSONL for monitoring and retraining) · metrics.py (Prometheus) ·
server.py (start uvicorn).
"""

from tunesmith.serve.app import Limits, ServerState, create_app
from tunesmith.serve.server import build_state, serve, start_in_background

__all__ = ["Limits", "ServerState", "build_state", "create_app", "serve", "start_in_background"]
