"""The linear probe is scikit-learn's LogisticRegression on standardized features, and the classification metrics
agree with sklearn.metrics, on fixed data (scikit-learn's digits; a hand-checked prediction vector)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, log_loss, precision_recall_fscore_support
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.preprocessing import StandardScaler

from ptcli.errors import UsageError
from ptcli.metrics import classification_report, confusion_matrix, score_logits
from ptcli.probes import PROTOCOLS, describe, linear_probe


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    x, y = torch.from_numpy(x).float(), torch.from_numpy(y).long()
    return x[:1000], y[:1000], x[1000:], y[1000:]


def test_linear_probe_is_standardized_lbfgs_logistic_regression(digits):
    xtr, ytr, xte, yte = digits
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # converges within the protocol's max_iter: no warning at all
        pred = linear_probe(xtr, ytr, xte, num_classes=10)
    assert pred.dtype == torch.long and pred.shape == yte.shape
    # The same model written out with scikit-learn directly.
    scaler = StandardScaler().fit(xtr.double().numpy())
    reference = LogisticRegression(C=1.0, solver="lbfgs", max_iter=1000).fit(scaler.transform(xtr.double().numpy()),
                                                                            ytr.numpy())
    expected = reference.predict(scaler.transform(xte.double().numpy()))
    assert np.array_equal(pred.numpy(), expected)
    accuracy = float((pred == yte).float().mean())
    assert accuracy > 0.9, accuracy  # 797 held-out digits from 64 raw pixel features
    assert torch.equal(linear_probe(xtr, ytr, xte, num_classes=10), pred)  # deterministic


def test_linear_probe_features_are_standardized(digits):
    # A feature in other units (x1000) and an offset change nothing: the probe sees standardized features.
    xtr, ytr, xte, _ = digits
    scale = torch.ones(64)
    scale[::2] = 1000.0
    pred = linear_probe(xtr, ytr, xte, num_classes=10)
    assert torch.equal(linear_probe(xtr * scale + 7.0, ytr, xte * scale + 7.0, num_classes=10), pred)


def test_unconverged_linear_probe_warns(digits):
    xtr, ytr, xte, _ = digits
    with pytest.warns(ConvergenceWarning) as record:
        linear_probe(xtr, ytr, xte, num_classes=10, max_iter=3)
    messages = [str(w.message) for w in record if issubclass(w.category, ConvergenceWarning)]
    # One warning, naming the probe (scikit-learn's own generic one is replaced, not added to).
    assert len(messages) == 1 and messages[0].startswith("linear probe: lbfgs stopped at max_iter=3"), messages


def test_linear_probe_edge_cases(digits):
    xtr, ytr, xte, _ = digits
    one = ytr == 3
    assert torch.equal(linear_probe(xtr[one], ytr[one], xte[:5], num_classes=10), torch.full((5,), 3))
    with pytest.raises(UsageError, match="C and max_iter must be positive"):
        linear_probe(xtr, ytr, xte, num_classes=10, C=0.0)
    with pytest.raises(UsageError, match="needs labeled training examples"):
        linear_probe(xtr[:0], ytr[:0], xte, num_classes=10)


def test_linear_protocol_says_what_it_is():
    spec = PROTOCOLS["linear"]
    assert "LogisticRegression" in spec["description"] and "StandardScaler" in spec["description"]
    assert describe("linear") == "linear(solver=lbfgs, C=1.0, max_iter=1000)"
    assert not {"seed", "epochs", "lr"} & set(spec)  # parameters of the old SGD loop, which the fit no longer has


# Fixed predictions, checked by hand: 4 classes, class 3 absent from y_true but predicted once, class 2 never
# predicted. Confusion rows (true) 0: [2, 1, 0, 0], 1: [0, 2, 0, 1], 2: [1, 1, 0, 0].
Y_TRUE = np.array([0, 0, 0, 1, 1, 1, 2, 2])
Y_PRED = np.array([0, 0, 1, 1, 1, 3, 0, 1])
NAMES = ["a", "b", "c", "d"]


def test_metrics_by_hand_and_against_sklearn():
    r = classification_report(Y_TRUE, Y_PRED, NAMES)
    assert r["confusion"] == [[2, 1, 0, 0], [0, 2, 0, 1], [1, 1, 0, 0], [0, 0, 0, 0]]
    assert r["accuracy"] == pytest.approx(4 / 8)
    # F1 by hand: a: p=2/3 r=2/3 -> 2/3; b: p=2/4 r=2/3 -> 4/7; c: 0. Macro over the present classes a, b, c.
    assert r["per_class"]["a"]["f1"] == pytest.approx(2 / 3)
    assert r["per_class"]["b"] == pytest.approx({"precision": 0.5, "recall": 2 / 3, "f1": 4 / 7, "support": 3})
    assert r["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert r["macro_f1"] == pytest.approx((2 / 3 + 4 / 7 + 0) / 3)
    # scikit-learn, called independently.
    assert r["accuracy"] == pytest.approx(accuracy_score(Y_TRUE, Y_PRED))
    assert r["macro_f1"] == pytest.approx(f1_score(Y_TRUE, Y_PRED, labels=[0, 1, 2], average="macro",
                                                   zero_division=0))
    assert np.array_equal(np.array(r["confusion"]), sk_confusion_matrix(Y_TRUE, Y_PRED, labels=[0, 1, 2, 3]))
    p, rec, f, s = precision_recall_fscore_support(Y_TRUE, Y_PRED, labels=[0, 1, 2, 3], zero_division=0)
    for i, name in enumerate(NAMES):
        assert r["per_class"][name] == pytest.approx({"precision": p[i], "recall": rec[i], "f1": f[i],
                                                      "support": s[i]})


def test_metrics_on_random_predictions_agree_with_sklearn():
    rng = np.random.default_rng(0)
    for trial in range(20):
        k = int(rng.integers(2, 8))
        y_true = rng.integers(0, k - (trial % 2), 50)  # odd trials: the last class never occurs
        y_pred = np.where(rng.random(50) < 0.5, y_true, rng.integers(0, k, 50))
        r = classification_report(y_true, y_pred, [str(i) for i in range(k)])
        present = np.unique(y_true)
        assert r["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, labels=present, average="macro",
                                                       zero_division=0))
        assert r["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
        assert np.array_equal(np.array(r["confusion"]), sk_confusion_matrix(y_true, y_pred, labels=np.arange(k)))


def test_score_logits_loss_is_sklearn_log_loss():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(30, 5)).astype(np.float32)
    y = rng.integers(0, 5, 30)
    r = score_logits(torch.from_numpy(logits), torch.from_numpy(y), list("abcde"))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert r["loss"] == pytest.approx(log_loss(y, probs, labels=np.arange(5)), rel=1e-5)
    assert r["accuracy"] == pytest.approx(accuracy_score(y, logits.argmax(1)))


def test_empty_split_scores_zero():
    r = classification_report(np.array([], dtype=int), np.array([], dtype=int), NAMES)
    assert r["accuracy"] == 0.0 and r["macro_f1"] == 0.0 and r["confusion"] == [[0] * 4] * 4
    assert confusion_matrix(np.array([1]), np.array([2]), 3).tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 0]]


def test_knn_inside_a_bf16_autocast_region_matches_float32(digits):
    # A bf16 run evaluates its kNN probe inside autocast: the similarities must stay float32 (it crashed in
    # scatter_add_ on the mixed dtypes, and bf16 similarities would reorder the neighbours).
    from ptcli.probes import knn_classify

    xtr, ytr, xte, _ = digits
    args = (xtr, ytr, xte, 10)
    ref = knn_classify(*args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = knn_classify(*args)
    assert torch.equal(got, ref)
