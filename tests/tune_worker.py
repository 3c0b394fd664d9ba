"""Subprocess worker for tests/test_tune.py: runs `tunelens.tune.tune` with settings given as JSON.

    python tests/tune_worker.py '{"model": ..., "data": [...], "out": ..., "max_steps": 12, ...}'

Every key is passed to `load_config` except these worker options:

- ``step_sleep`` (seconds): sleep at the end of every optimizer step, so a test can kill the run mid-way;
- ``dump_weights`` (bool): every rank writes its trainable parameters to ``<out>/rank{RANK}-init.safetensors``
  when training begins and ``<out>/rank{RANK}.safetensors`` when ``Trainer.train`` returns (under torchrun each
  rank trains its own replica, so identical files mean the replicas stayed in sync).

`tune()` takes no callbacks, so the hooks are added to `AtomicCheckpoints` (mixed into every objective's trainer)
in this process only.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def _trainable(model) -> dict:
    return {n: p.detach().float().cpu().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def main(argv: list[str]) -> int:
    from safetensors.torch import save_file
    from transformers import TrainerCallback

    from tunelens.tune import trainer as tt
    from tunelens.tune.config import load_config

    spec = json.loads(argv[1])
    step_sleep = float(spec.pop("step_sleep", 0.0))
    dump = bool(spec.pop("dump_weights", False))
    rank = int(os.environ.get("RANK", "0"))
    out = Path(spec["out"])

    class Hooks(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if dump and model is not None:
                out.mkdir(parents=True, exist_ok=True)
                save_file(_trainable(model), str(out / f"rank{rank}-init.safetensors"))

        def on_step_end(self, args, state, control, **kwargs):
            if step_sleep:
                time.sleep(step_sleep)

    cls = tt.AtomicCheckpoints  # mixed into every objective's trainer (SFT, CPT, DPO, ...)

    def __init__(self, *a, **k):
        super(cls, self).__init__(*a, **k)
        self.add_callback(Hooks())

    def train(self, *a, **k):
        result = super(cls, self).train(*a, **k)
        if dump:
            save_file(_trainable(self.model), str(out / f"rank{rank}.safetensors"))
        return result

    cls.__init__, cls.train = __init__, train

    final = tt.tune(load_config(**spec))
    print(f"WORKER_DONE rank={rank} final={final}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
