"""Runs: the request and its checks (``runner``, ``config``, ``paths``) and the one public
API to assemble and play one run."""

from mmbench.run.assemble import AssembledRun, assemble, run_once
from mmbench.run.policy_spec import PolicySpec, parse_policy

__all__ = ["AssembledRun", "PolicySpec", "assemble", "parse_policy", "run_once"]
