"""Rotten Tomatoes snippets on MiniLM: fresh vs rotten (`rotten-tomatoes`).

12,752 distinct snippets of Pang & Lee's critics' corpus (bench/data), split once by content hash: 9,752 train,
1,000 validation, 2,000 test; 57.8 % are fresh.
"""

from __future__ import annotations

from bench.spec.tasks import data
from bench.spec.tasks.text import register_text_task

register_text_task(
    "rotten-tomatoes",
    "Rotten Tomatoes snippets, fresh vs rotten, on pretrained MiniLM-L6 (val/test accuracy, macro-F1)",
    lambda args: data.rotten_tomatoes(),
)
