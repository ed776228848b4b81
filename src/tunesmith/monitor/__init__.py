"""Drift of live inputs against a run's training data, and retraining behind a gate.

`tunesmith monitor` compares windows of live inputs (the server's request log, or any
file tunesmith reads) with the run's own training inputs on several signals, each
with a null calibrated on reference-vs-reference splits; `tunesmith retrain` trains a
challenger on old + new data and promotes it only if it beats the champion.
"""
