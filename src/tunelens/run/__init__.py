"""tunelens run: the whole pipeline from one config — tune, audit, diff, graft, repair, report — with every
stage cached by a hash of its inputs, so reruns skip finished work and a killed run resumes."""

from .config import STAGES, RunConfig, load_run_config, parse_config
from .pipeline import EXIT_GATE_FAILED, EXIT_STAGE_FAILED, RunResult, run_pipeline, stage_hashes

__all__ = ["STAGES", "RunConfig", "load_run_config", "parse_config", "EXIT_GATE_FAILED", "EXIT_STAGE_FAILED",
           "RunResult", "run_pipeline", "stage_hashes"]
