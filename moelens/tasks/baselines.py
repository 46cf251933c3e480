"""What an accuracy must beat: the majority-class rate and balanced accuracy of a choice task.

On an unbalanced set (CR: 64% positive), an accuracy of 0.62 is below always answering the
majority class; balanced accuracy (the mean of the per-class recalls, 0.5 for any constant answer
on two classes) says so directly. Both are computed on the evaluated records' gold labels.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

__all__ = ["balanced_accuracy", "majority_rate"]


def majority_rate(golds: Sequence) -> float:
    """Accuracy of always answering the most frequent gold label of these records.

    >>> majority_rate([1, 1, 1, 0])
    0.75
    """
    if not golds:
        return float("nan")
    return Counter(golds).most_common(1)[0][1] / len(golds)


def balanced_accuracy(predictions: Sequence, golds: Sequence) -> float:
    """Mean over the gold classes of the recall of that class (scikit-learn's
    ``balanced_accuracy_score``); 1/n_classes for any constant answer.

    >>> balanced_accuracy([1, 1, 1, 1], [1, 1, 1, 0])
    0.5
    >>> balanced_accuracy([1, 0, 1, 0], [1, 1, 0, 0])
    0.5
    """
    if not golds:
        return float("nan")
    recalls = []
    for label in sorted(set(golds), key=repr):
        idx = [i for i, g in enumerate(golds) if g == label]
        recalls.append(sum(predictions[i] == label for i in idx) / len(idx))
    return sum(recalls) / len(recalls)
