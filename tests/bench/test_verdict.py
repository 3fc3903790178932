"""The rank question's verdict lines: a gap beyond two standard errors, the share RandLoRA closes at equal
parameters, and accuracy against the update's rank at a fixed budget."""

from __future__ import annotations

import pandas as pd

from bench.views.verdict import verdicts


def _row(method, r, trainable, mean, std=0.002, seeds=3, n_bases=None, update_rank=None):
    return {"task": "t", "model": "m", "method": method, "r": r, "trainable_params": trainable, "mean": mean,
            "std": std, "seeds": seeds, "metric": "test_accuracy", "n_bases": n_bases, "update_rank": update_rank}


def _summary(randlora_mean: float, full_mean: float = 0.90) -> pd.DataFrame:
    return pd.DataFrame([
        _row("lora", 8, 1000, 0.80), _row("randlora", 6, 1040, randlora_mean), _row("full", None, 50000, full_mean),
        _row("randlora", 4, 500, 0.81, n_bases=4, update_rank=16), _row("randlora", 32, 600, 0.85, n_bases=4,
                                                                          update_rank=128),
    ])  # fmt: skip


def test_a_full_rank_win_at_equal_parameters_reproduces_the_paper():
    lines = verdicts(_summary(randlora_mean=0.85))
    assert lines[0].startswith("t (m, test_accuracy): full − LoRA r8 = +0.1000")
    assert "closes 50% of the gap" in lines[1]
    assert lines[-1] == "  verdict: reproduces the paper: at equal parameters the full-rank update recovers part of the gap"
    assert any("accuracy rises with the update's rank" in line for line in lines)


def test_a_tie_is_unresolved_and_a_loss_contradicts():
    assert "unresolved at this noise: RandLoRA and LoRA tie" in verdicts(_summary(randlora_mean=0.801))[-1]
    assert "contradicts the paper" in verdicts(_summary(randlora_mean=0.70))[-1]


def test_no_gap_means_the_question_cannot_be_asked():
    lines = verdicts(_summary(randlora_mean=0.85, full_mean=0.801))
    assert "(not beyond two standard errors)" in lines[0]
    assert "no gap between LoRA and full fine-tuning" in lines[-1]


def _probe_row(method, r, trainable, mean, args, p_over_n, ceiling=None):
    return {**_row(method, r, trainable, mean), "task": "full-rank-probe", "task_args": args,
            "metric": "test_output_recovered", "p_over_n_mean": p_over_n, "top_r_energy_mean": ceiling}


def test_a_probe_reads_each_target_against_p_over_n_and_lora_s_ceiling():
    rows = []
    for args, lora_mean, rand_mean in (('{"delta_rank": 4, "match": "layers"}', 0.99, 0.40), ('{"match": "layers"}', 0.031, 0.058)):
        rows += [_probe_row("lora", 16, 1000, lora_mean, args, 0.05, ceiling=1.0 if "delta_rank" in args else 16 / 512),
                 _probe_row("randlora", 12, 1010, rand_mean, args, 0.051)]
    lines = verdicts(pd.DataFrame(rows))
    heads = [line for line in lines if not line.startswith("  ")]
    assert [h.split(" (")[0] for h in heads] == ["full-rank-probe delta_rank=4", "full-rank-probe delta_rank=null"]
    low, full = (line for line in lines if line.startswith("  LoRA r16"))
    assert "(p/N 0.050): 0.9900" in low and "ceiling 1.0000" in low and "RandLoRA − LoRA = -0.5900" in low
    assert "ceiling 0.0312" in full and "RandLoRA r12 (p/N 0.051): 0.0580" in full and "= +0.0270" in full


def test_a_probe_s_lora_row_is_set_beside_randlora_only_at_a_similar_count():
    rows = [_probe_row("lora", 16, 1000, 0.5, "{}", 0.05, 0.6), _probe_row("lora", 64, 4000, 0.9, "{}", 0.2, 0.95),
            _probe_row("randlora", 12, 1050, 0.3, "{}", 0.052)]
    lines = [line for line in verdicts(pd.DataFrame(rows)) if line.startswith("  LoRA")]
    assert "RandLoRA r12" in lines[0] and "RandLoRA" not in lines[1]


def test_the_rank_question_reads_the_float_base_rows_and_names_what_is_missing():
    rows = _summary(randlora_mean=0.85)
    rows["quant"] = "none"
    nf4 = rows.assign(quant="nf4", mean=rows["mean"] - 0.2)  # a much worse quantised copy must not enter the verdict
    assert verdicts(pd.concat([rows, nf4]))[-1] == verdicts(rows)[-1]
    assert "no full fine-tuning row" in verdicts(rows[rows["method"] != "full"])[0]


def test_a_quantised_row_is_set_against_the_same_method_on_the_float_base():
    from bench.views.verdict import quant_costs

    base = [_row("lora", 8, 1000, 0.800), _row("randlora", 6, 1040, 0.810)]
    rows = pd.DataFrame([
        {**base[0], "quant": "none"}, {**base[0], "quant": "nf4", "mean": 0.790},  # 0.010 lower: beyond 2 SE (0.0033)
        {**base[1], "quant": "none"}, {**base[1], "quant": "int8", "mean": 0.809},  # within noise
    ])  # fmt: skip
    lines = quant_costs(rows)
    assert len(lines) == 2
    assert lines[0].startswith("t lora r8: nf4 0.7900") and "nf4 − float = -0.0100" in lines[0]
    assert lines[0].endswith("costs accuracy beyond two SE")
    assert lines[1].startswith("t randlora r6: int8") and lines[1].endswith("no difference beyond two SE")
    assert quant_costs(rows[rows["quant"] == "none"]) == []
