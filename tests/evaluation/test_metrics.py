import math

from penstock.evaluation.metrics import mrr_at, ndcg_at, recall_at, unique_documents


def test_metrics_of_a_ranking_with_one_relevant_document() -> None:
    ranked = ["a", "b", "c"]
    assert recall_at(ranked, {"b"}, 1) == 0 and recall_at(ranked, {"b"}, 5) == 1
    assert mrr_at(ranked, {"b"}, 10) == 0.5
    assert math.isclose(ndcg_at(ranked, {"b"}, 10), 1 / math.log2(3))
    assert ndcg_at(["b"], {"b"}, 10) == 1.0 and mrr_at(ranked, {"z"}, 10) == 0.0


def test_chunks_rank_their_documents_at_the_best_chunk() -> None:
    assert unique_documents(["x", "y", "x", "z", "y"]) == ["x", "y", "z"]
