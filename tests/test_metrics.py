import numpy as np
import pytest

from privfl.metrics import accuracy, confusion, uar


def test_uar_is_mean_per_class_recall():
    y = np.array([0, 0, 0, 0, 1, 1, 2, 3])
    p = np.array([0, 0, 0, 1, 1, 0, 2, 0])
    # recalls: 3/4, 1/2, 1, 0 -> 0.5625 ; accuracy 5/8
    assert uar(y, p, 4) == 0.5625
    assert accuracy(y, p) == 0.625
    assert confusion(y, p, 4)[0].tolist() == [3, 1, 0, 0]


def test_uar_ignores_absent_classes():
    assert uar(np.array([0, 1]), np.array([0, 1]), 4) == 1.0


def test_confusion_counts_are_integers():
    assert confusion(np.array([0, 1, 1]), np.array([0, 1, 0]), 2).dtype == np.int64


def test_scores_of_an_empty_set_are_refused_and_of_one_item_defined():
    with pytest.raises(ValueError, match="^UAR of an empty set is undefined$"):
        uar(np.array([], dtype=int), np.array([], dtype=int), 4)
    with pytest.raises(ValueError, match="^accuracy of an empty set is undefined$"):
        accuracy(np.array([]), np.array([]))
    assert accuracy(np.array([2]), np.array([2])) == 1.0
    assert uar(np.array([2]), np.array([1]), 4) == 0.0
