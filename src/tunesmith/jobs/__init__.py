"""OpenAI's fine-tuning jobs API on `tunesmith serve --jobs`.

store.py (SQLite: files, jobs, events, checkpoints) · schemas.py (request checks, the
OpenAI objects) · configure.py (a job → RunConfig) · routes.py (the HTTP routes) ·
worker.py (`tunesmith worker`) · child.py (one job's training process) · progress.py
(metrics and checkpoints → events) · server.py (join them to a server).
"""
