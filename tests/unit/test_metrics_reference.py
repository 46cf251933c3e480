"""Hand-computed ground truth for every metric on a tiny example.

Four real tokens, three experts, top-1, plus one padding token full of junk:

| token | scores            | renormalised      | routed to | normalised entropy   |
|-------|-------------------|-------------------|-----------|----------------------|
| t0    | 1, 0, 0           | 1, 0, 0           | e0        | 0                    |
| t1    | .2, .2, .2 (sigm.)| 1/3, 1/3, 1/3     | e0        | 1                    |
| t2    | .9, .9, 0         | 1/2, 1/2, 0       | e1        | ln 2 / ln 3          |
| t3    | 0, .5, .5         | 0, 1/2, 1/2       | e1        | ln 2 / ln 3          |
| pad   | nan, -1, 5        | -                 | (e2)      | -                    |

A = (2/4, 2/4, 0); H = ((0 + 1)/2, ln2/ln3, NaN); CWAS = (0.25, 0.5 (1 - ln2/ln3), 0).
"""

import doctest
import math

import pytest
import torch

import moelens.metrics
from moelens.metrics import (
    activation_rate,
    cwas,
    domain_specificity,
    kl_divergence,
    normalized_entropy,
    routing_entropy,
    routing_sums,
    topk_mask_from_indices,
)

LN2_LN3 = 0.6309297535714574  # ln 2 / ln 3, written out
NAN = float("nan")

SCORES = torch.tensor(
    [[[1.0, 0.0, 0.0], [0.2, 0.2, 0.2], [0.9, 0.9, 0.0]],
     [[0.0, 0.5, 0.5], [NAN, -1.0, 5.0], [0.0, 0.0, 0.0]]]
)  # [batch=2 pos=3 n_experts=3]; [1, 1] and [1, 2] are padding
TOPK = topk_mask_from_indices(torch.tensor([[[0], [0], [1]], [[1], [2], [2]]]), 3)
MASK = torch.tensor([[True, True, True], [True, False, False]])


def _assert_list(actual: torch.Tensor, expected: list[float]) -> None:
    assert actual.shape == (len(expected),)
    for a, e in zip(actual.tolist(), expected):
        assert (math.isnan(a) and math.isnan(e)) or a == pytest.approx(e, abs=1e-6), (a, e)


def test_activation_rate():
    _assert_list(activation_rate(TOPK, MASK), [0.5, 0.5, 0.0])
    _assert_list(activation_rate(TOPK), [2 / 6, 2 / 6, 2 / 6])  # without the mask pads count
    _assert_list(activation_rate(TOPK, MASK.long()), [0.5, 0.5, 0.0])  # 0/1 attention mask


def test_routing_entropy_renormalises_sigmoid_scores():
    _assert_list(routing_entropy(TOPK, SCORES, MASK), [0.5, LN2_LN3, NAN])
    _assert_list(normalized_entropy(SCORES[0]), [0.0, 1.0, LN2_LN3])


def test_cwas():
    sums = routing_sums(TOPK, SCORES, MASK)
    expected = [0.25, 0.5 * (1 - LN2_LN3), 0.0]
    _assert_list(sums.cwas, expected)
    _assert_list(cwas(sums.activation_rate, sums.entropy), expected)
    assert int(sums.n_tokens) == 4
    assert sums.counts.tolist() == [2, 2, 0]
    _assert_list(sums.score_sums, [2.1, 1.6, 0.7])  # raw scores summed over real tokens
    _assert_list(sums.mean_score, [2.1 / 4, 1.6 / 4, 0.7 / 4])


def test_flattened_tokens_give_the_same_sums():
    flat = routing_sums(TOPK.reshape(6, 3), SCORES.reshape(6, 3), MASK.reshape(6))
    _assert_list(flat.cwas, [0.25, 0.5 * (1 - LN2_LN3), 0.0])


def test_half_precision_scores_are_computed_in_fp32():
    _assert_list(routing_entropy(TOPK, SCORES.bfloat16(), MASK), [0.5, LN2_LN3, NAN])


def test_domain_specificity_uniform_one_hot_and_undefined():
    rates = torch.tensor(
        [[0.2, 0.4, 0.5, 0.0],
         [0.2, 0.0, 0.5, 0.0],
         [0.2, 0.0, 0.0, 0.0]]
    )  # [domain=3 expert=4]: uniform, one-hot, two of three, never active
    _assert_list(domain_specificity(rates), [0.0, 1.0, 1 - LN2_LN3, NAN])
    _assert_list(domain_specificity(rates.T, dim=1), [0.0, 1.0, 1 - LN2_LN3, NAN])
    _assert_list(domain_specificity(rates[:1]), [NAN, NAN, NAN, NAN])  # single domain


def test_kl_divergence_reference_values():
    p = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.25, 0.75]]).log()
    q = torch.tensor([[0.25, 0.75], [0.5, 0.5], [0.25, 0.75]]).log()
    # 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75) = 0.5 ln(4/3); 1 ln(1/0.5) = ln 2 (the 0 ln 0 term is 0)
    per_row = [0.5 * math.log(4 / 3), math.log(2), 0.0]
    _assert_list(kl_divergence(p, q), per_row)
    assert float(kl_divergence(p, q, "sum")) == pytest.approx(sum(per_row), abs=1e-6)
    assert float(kl_divergence(p, q, "mean")) == pytest.approx(sum(per_row) / 3, abs=1e-6)
    mask = torch.tensor([True, False, True])
    assert float(kl_divergence(p, q, "mean", mask)) == pytest.approx(per_row[0] / 2, abs=1e-6)
    # Q puts zero mass where P has some: infinite divergence, not NaN.
    assert kl_divergence(q[:1], p[1:2]).isinf().all()


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda: activation_rate(TOPK.long(), MASK), "topk_mask_from_indices"),
        (lambda: activation_rate(TOPK, MASK[:, :2]), "(2, 2)"),
        (lambda: routing_sums(TOPK, SCORES[..., :2], MASK), "(2, 3, 2)"),
        (lambda: routing_sums(TOPK, SCORES.log(), MASK), "softmax"),
        (lambda: cwas(torch.zeros(3), torch.zeros(2)), "(3,)"),
        (lambda: kl_divergence(torch.zeros(2, 3), torch.zeros(2, 4)), "(2, 4)"),
        (lambda: topk_mask_from_indices(torch.tensor([[3]]), 3), "[0, 3)"),
    ],
)
def test_bad_input_names_the_shape_or_the_fix(call, needle):
    with pytest.raises(ValueError) as info:
        call()
    assert needle in str(info.value)


def test_docstring_examples_run():
    result = doctest.testmod(moelens.metrics)
    assert result.attempted > 5 and result.failed == 0
