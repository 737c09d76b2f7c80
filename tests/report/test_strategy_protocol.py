"""The strategy table's fine-grained retrieval columns and the retrieval protocol in its context,
on runs built in memory; the protocol as read back from an evaluation's metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

from scl_slt.report.runs import Run, read_retrieval_protocol
from scl_slt.report.strategies import STRATEGY_METRICS, strategy_tables

EXCLUDE = {"duplicates": "exclude", "fine_k": 10, "fine_k_used": 10}


def stage1(name: str, strategy: str, seed: int, fine_r1: float, protocol=EXCLUDE) -> Run:
    config = {"stage": {"name": "contrastive", "epochs": 5}, "selection": {"name": strategy}}
    alignment = {"v2t_r1": 50.0, "t2v_r1": 40.0, "fine_v2t_r1": fine_r1,
                 "fine_t2v_r1": fine_r1 - 5, "sdr": 0.3}  # fmt: skip
    return Run(path=Path("/runs") / name, config=config, dataset="synthetic", seed=seed,
               metrics={"bleu4": 10.0}, alignment=alignment, retrieval_protocol=protocol)  # fmt: skip


def test_fine_columns_sit_beside_the_coarse_ones_and_the_context_names_the_protocol():
    assert STRATEGY_METRICS[:4] == ("v2t_r1", "t2v_r1", "fine_v2t_r1", "fine_t2v_r1")
    runs = [stage1("a", "random", 0, 20.0), stage1("b", "random", 1, 30.0),
            stage1("c", "text_semantic", 0, 45.0)]  # fmt: skip
    (table,) = strategy_tables(runs)
    rows = {row.label: row for row in table.rows}
    assert sorted(rows["random"].values("fine_v2t_r1")) == [20.0, 30.0]
    assert sorted(rows["random"].values("fine_t2v_r1")) == [15.0, 25.0]
    assert rows["text_semantic"].values("fine_v2t_r1") == [45.0]
    assert table.context == "5 stage-1 epochs; retrieval: duplicates exclude, fine_k 10"


def test_differing_protocols_are_each_named_with_their_runs():
    hit = {"duplicates": "hit", "fine_k": 5}
    runs = [stage1("a", "random", 0, 20.0), stage1("b", "random", 1, 30.0, hit),
            stage1("c", "text_semantic", 0, 45.0, None)]  # fmt: skip
    (table,) = strategy_tables(runs)
    assert table.context == (
        "5 stage-1 epochs; retrieval protocols differ: duplicates exclude, fine_k 10 (1 run); "
        "duplicates hit, fine_k 5 (1 run); not recorded (1 run)"
    )


def test_protocol_is_read_from_the_alignment_entry(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(
        json.dumps({"metrics": {}, "alignment": {"v2t_r1": 1.0, "retrieval_protocol": EXCLUDE}})
    )
    assert read_retrieval_protocol(path) == EXCLUDE
    path.write_text(json.dumps({"metrics": {}, "alignment": {"v2t_r1": 1.0}}))
    assert read_retrieval_protocol(path) is None
    path.write_text(json.dumps([1, 2]))
    assert read_retrieval_protocol(path) is None
