"""benchmarks/profile_summary.py on a hand-made py-spy raw profile."""

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
from profile_summary import summarize  # noqa: E402

TRAIN = 'process 1:"python bench.py";process 2:"python steps/train.py --iters 4"'
RAW = [
    f"{TRAIN};main (steps/train.py:5);IterBasedTrainLoop.run_iter (mmengine/runner/loops.py:9);"
    "forward (model.py:3);conv (torch/conv.py:7) 6",
    f"{TRAIN};main (steps/train.py:5);IterBasedTrainLoop.run_iter (mmengine/runner/loops.py:9);"
    "loss (head.py:8);item (torch/tensor.py:2) 3",
    f"{TRAIN};main (steps/train.py:5);IterBasedTrainLoop.run_iter (mmengine/runner/loops.py:9) 1",
    f"{TRAIN};main (steps/train.py:5);ValLoop.run_iter (mmengine/runner/loops.py:40);decode (coco.py:1) 50",
    'process 1:"python bench.py";main (bench.py:3);synthesize (synth.py:4) 70',
]


def test_counts_only_the_training_iterations_of_the_named_process():
    total, own, inclusive = summarize(RAW, "steps/train.py", "IterBasedTrainLoop.run_iter")
    assert total == 10
    assert own == {"conv (torch/conv.py)": 6, "item (torch/tensor.py)": 3,
                   "IterBasedTrainLoop.run_iter (mmengine/runner/loops.py)": 1}
    assert inclusive["main (steps/train.py)"] == 10 and inclusive["loss (head.py)"] == 3
    assert "decode (coco.py)" not in inclusive and "synthesize (synth.py)" not in inclusive
