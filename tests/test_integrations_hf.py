"""codiag's Trainer callback with a real Hugging Face ``Trainer`` on the CPU, on Fashion-MNIST.

The example (``examples/hf_trainer_fgsm.py``, tiny sizes: FGSM in a ``compute_loss``
override, dict items, a model returning ``ImageClassifierOutput``) collapses at eps 0.3;
the callback finds the model and optimizer in the Trainer's callback arguments, its
alarm sets ``control.should_training_stop`` and the Trainer stops at that step.
Nothing is downloaded (offline mode, the model is built locally).
"""
from __future__ import annotations

import os

import pytest
import torch
from example_modules import load_example

for _name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_name, "1")
pytest.importorskip("transformers", reason="transformers is not installed (pip install codiag[hf])")
pytest.importorskip("accelerate", reason="accelerate is not installed (pip install codiag[hf])")

from codiag.runs import load_run  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_the_example_trainer_collapses_and_the_alarm_stops_it(tmp_path, capsys, one_thread):
    out = tmp_path / "run"
    example = load_example("hf_trainer_fgsm")
    rc = example.main(["--train-limit", "2048", "--test-limit", "256", "--probe-n", "128", "--epochs", "3",
                       "--probes", "robust_acc,grad_align", "--no-report", "--out", str(out)])
    assert rc == 0
    run = load_run(out)
    [alarm] = run.events_of("co_alarm")
    assert run.meta["status"] == "finished"
    assert alarm["values"]["pgd_acc"] <= 0.1
    pgd = run.scalar("robust_acc", "pgd_acc")
    assert int(pgd["step"].max()) == alarm["step"] < 16 * 3   # training stopped at the alarm's step
    assert f"stopped after {alarm['step']} steps" in capsys.readouterr().out
    assert run.meta["config"]["model"] == "SmallCNN" and run.meta["monitor_stats"]["steps"] == alarm["step"]
