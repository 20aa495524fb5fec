"""Classification and QA metrics: hand-computed cases, documented values and cross-checks against reference
implementations."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score as sk_balanced
from sklearn.metrics import matthews_corrcoef as sk_matthews

from pf2lora.metrics import accuracy, balanced_accuracy, matthews_corrcoef, normalize_answer, squad_em_f1

# Generation metrics (BLEU, NIST, METEOR, ROUGE-L, CIDEr, TER): tests/test_generation_metrics.py.


# ----------------------------------------------------------------------------------------------- classification


def test_accuracy():
    assert accuracy([1, 0, 2, 2], [1, 1, 2, 0]) == 0.5
    assert accuracy(np.array([3, 3]), np.array([3, 3])) == 1.0
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        accuracy([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="empty"):
        accuracy([], [])


def test_matthews_binary_by_hand():
    # TP=2, FP=1, TN=2, FN=0: (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = 4 / sqrt(3·2·3·2)
    assert matthews_corrcoef([1, 1, 0, 0, 1], [1, 0, 0, 0, 1]) == pytest.approx(4 / 6)
    assert matthews_corrcoef([0, 1, 0, 1], [0, 1, 0, 1]) == pytest.approx(1.0)
    assert matthews_corrcoef([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(-1.0)


def test_matthews_undefined_is_zero():
    assert matthews_corrcoef([1, 1, 1], [0, 1, 0]) == 0.0  # one predicted class
    assert matthews_corrcoef([0, 1, 2], [2, 2, 2]) == 0.0  # one true class
    assert matthews_corrcoef([], []) == 0.0


@pytest.mark.parametrize("seed", range(12))
def test_matthews_matches_scikit_learn(seed: int):
    rng = np.random.default_rng(seed)
    n_classes, n = int(rng.integers(2, 6)), int(rng.integers(1, 80))
    labels = rng.integers(0, n_classes, n)
    # Mostly-right predictions, some drawn from a narrower range so classes go missing from one side.
    preds = np.where(rng.random(n) < 0.6, labels, rng.integers(0, max(n_classes - seed % 3, 1), n))
    assert matthews_corrcoef(preds, labels) == pytest.approx(sk_matthews(labels, preds), abs=1e-12)
    names = np.array(["neg", "neutral", "pos", "mixed", "other"])  # any hashable labels, not only integers
    assert matthews_corrcoef(list(names[preds]), list(names[labels])) == pytest.approx(
        sk_matthews(names[labels], names[preds]), abs=1e-12
    )


@pytest.mark.parametrize("seed", range(6))
def test_balanced_accuracy_matches_scikit_learn(seed: int):
    rng = np.random.default_rng(100 + seed)
    n_classes, n = int(rng.integers(2, 5)), int(rng.integers(2, 60))
    labels = rng.integers(0, n_classes, n)
    preds = np.where(rng.random(n) < 0.5, labels, rng.integers(0, n_classes, n))
    if not set(preds) <= set(labels):  # scikit-learn warns (and ignores) predicted classes absent from labels
        preds = np.where(np.isin(preds, labels), preds, labels)
    assert balanced_accuracy(preds, labels) == pytest.approx(sk_balanced(labels, preds), abs=1e-12)


def test_balanced_accuracy_sees_through_a_label_prior():
    labels = [1] * 19 + [0]
    assert balanced_accuracy([1] * 20, labels) == 0.5  # 95% accuracy, half the classes recalled


# ----------------------------------------------------------------------------------------------- extractive QA


def test_normalize_answer_is_squads():
    assert normalize_answer("The  Quick, brown-fox!") == "quick brownfox"
    assert normalize_answer("An apple a day") == "apple day"
    assert normalize_answer("theater") == "theater"  # articles only as whole words
    assert normalize_answer(" The. ") == ""


def test_squad_em_f1_by_hand():
    predictions = {
        "q1": "The cat sat on mat.",  # tokens cat sat on mat vs gold cat on mat: P=3/4, R=1, F1=6/7
        "q2": "Barack Obama",
        "q3": "",  # v2: unanswerable and abstained
        "q4": "Paris",  # v2: unanswerable but answered
        "q5": "",  # answerable but abstained
    }
    references = {
        "q1": ["a cat on the mat", "dog"],
        "q2": ["barack obama", "Obama"],
        "q3": [],
        "q4": [""],
        "q5": ["Paris"],
    }
    scores = squad_em_f1(predictions, references)
    assert scores["exact_match"] == pytest.approx(100 * 2 / 5)
    assert scores["f1"] == pytest.approx(100 * (6 / 7 + 1 + 1) / 5)


def test_squad_no_answer_compares_normalised_text():
    # As the official v2.0 script: gold answers normalising to "" mean no answer, and so does a prediction "The."
    assert squad_em_f1({"q": "The."}, {"q": ["a", ""]}) == {"exact_match": 100.0, "f1": 100.0}
    assert squad_em_f1({"q": "the answer"}, {"q": ["The Answer!"]}) == {"exact_match": 100.0, "f1": 100.0}


def test_squad_requires_every_prediction():
    with pytest.raises(ValueError, match="'q2'"):
        squad_em_f1({"q1": "x"}, {"q1": ["x"], "q2": ["y"]})
