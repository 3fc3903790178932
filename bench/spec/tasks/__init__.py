"""Accuracy tasks: real pretrained weights and real data that work without a network, plus a synthetic probe.

    trec6, trec50, rotten-tomatoes   text classification on all-MiniLM-L6-v2 (trec.py, rotten_tomatoes.py, text.py)
    hf-text                          any Hugging Face `datasets` text-classification dataset (hf_text.py)
    mnist-transfer                   a Fashion-MNIST-pretrained ViT adapted on MNIST-5k (mnist_transfer.py, vit.py)
    full-rank-probe                  how much of a known full-rank ΔW* each method recovers (probe.py)
    lm-shift                         a byte Llama pretrained on Python code adapted to film reviews (lm_shift.py)
    update-probe                     how much of a real full fine-tuning update each method recovers (update_probe.py)

Importing this package registers them in `bench.tasks.TASKS`; nothing heavy (torch, transformers) is imported
until a cell builds its model. The data (data.py) is split once and for all; `summary.py` turns a results table
into mean ± std over seeds at the learning rate chosen on validation; `prepare.py` writes what a machine without
the packages needs (an fp16 MiniLM copy, the pretrained ViT).
"""

from bench.spec.tasks.base import TASKS, Task, model_loss, random_batches, register

# each module registers its tasks, in the order `python -m bench list tasks` shows them
from bench.spec.tasks import trec, rotten_tomatoes, hf_text, mnist_transfer, probe, lm_shift, update_probe  # noqa: E402, F401, I001

__all__ = ["TASKS", "Task", "model_loss", "random_batches", "register"]
