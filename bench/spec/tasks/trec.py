"""TREC question classification on MiniLM: 6 coarse classes (`trec6`) or 50 fine ones (`trec50`).

5,380 questions of the UIUC/TREC training files (bench/data), split once by content hash: 3,880 train, 500
validation, 1,000 test (no official test split comes with these files). TREC-50 has classes with a handful of
examples; macro-F1 shows how the rare ones fare.
"""

from __future__ import annotations

from bench.spec.tasks import data
from bench.spec.tasks.text import register_text_task

register_text_task("trec6", "TREC questions, 6 coarse classes, on pretrained MiniLM-L6 (val/test accuracy, macro-F1)",
                   lambda args: data.trec(fine=False))
register_text_task("trec50", "TREC questions, 50 fine classes, on pretrained MiniLM-L6 (val/test accuracy, macro-F1)",
                   lambda args: data.trec(fine=True))
