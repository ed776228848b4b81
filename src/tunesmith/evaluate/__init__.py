"""Evaluation: task metrics, baseline comparison with bootstrap intervals, forgetting, report."""
