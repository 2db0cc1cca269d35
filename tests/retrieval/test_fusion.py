from penstock.retrieval.fusion import RRF_K, reciprocal_rank_fusion
from penstock.store.documents import Hit


def hit(chunk_id: int, score: float = 0.0) -> Hit:
    return Hit(chunk_id, f"doc{chunk_id}", 1, "", "text", 1, score)


def test_a_chunk_both_searches_found_beats_one_found_by_one() -> None:
    dense = [hit(1, 0.9), hit(2, 0.8), hit(3, 0.7)]
    sparse = [hit(3, 12.0), hit(4, 9.0)]
    fused = reciprocal_rank_fusion([dense, sparse])
    assert [h.chunk_id for h in fused] == [3, 1, 2, 4]
    assert fused[0].score == 1 / (RRF_K + 3) + 1 / (RRF_K + 1)


def test_fusion_of_nothing_is_nothing() -> None:
    assert reciprocal_rank_fusion([[], []]) == []
