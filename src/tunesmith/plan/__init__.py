"""Memory, time and cost before a run, checked against the run; sweeps (docs/plan.md).

`build.plan_prepared` composes the parts: `weights` (parameter bytes on the meta device),
`workload` (the run's real batches), `probe` (what a step allocates, measured on a
shallow copy), `devices` (the machine), `estimate` (the sum, the verdict, time and cost)
and `render` (how it reads). `measure` is the other side: what the run really used.
"""

from tunesmith.plan.build import PlanRequest, plan_prepared
from tunesmith.plan.estimate import Plan

__all__ = ["Plan", "PlanRequest", "plan_prepared"]
