"""IPO (Azar et al. 2023, "A general theoretical paradigm to understand learning from human preferences"): DPO's
pairs and reference, a squared loss on the log-ratio margin instead of the logistic one, (h - 1/(2β))², which does
not push the margin to infinity on pairs that are already ordered. TRL's DPOTrainer with loss_type "ipo"."""

from __future__ import annotations

from . import register
from .dpo import DPO


@register("ipo")
class IPO(DPO):
    rank = 40
    description = "IPO on preference pairs: DPO's data and reference, a squared loss on the margin (TRL)"
    loss_type = "ipo"
