"""moelens.stats against independent references: McNemar = scipy's exact binomial test, the
bootstrap interval of a mean brackets it and narrows with n, Wilson = the closed form."""

import math

import pytest
import torch
from scipy.stats import binomtest

from moelens.stats import bootstrap_ci, mcnemar_p, paired_bootstrap, percentile_ci, wilson_ci


@pytest.mark.parametrize(("wins", "losses"), [(0, 1), (3, 1), (10, 0), (7, 9), (25, 12), (0, 40)])
def test_mcnemar_equals_the_exact_binomial_test(wins, losses):
    treated = [1] * wins + [0] * losses + [1, 0] * 3  # ties do not count
    control = [0] * wins + [1] * losses + [1, 0] * 3
    assert mcnemar_p(treated, control) == pytest.approx(binomtest(wins, wins + losses, 0.5).pvalue, rel=1e-12)


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_n():
    gen = torch.Generator().manual_seed(0)
    small, large = torch.rand(40, generator=gen).tolist(), torch.rand(4000, generator=gen).tolist()
    for values in (small, large):
        lo, hi = bootstrap_ci(values)
        assert lo < sum(values) / len(values) < hi
    assert bootstrap_ci(large)[1] - bootstrap_ci(large)[0] < bootstrap_ci(small)[1] - bootstrap_ci(small)[0]
    assert math.isnan(bootstrap_ci([])[0]) and math.isnan(percentile_ci(torch.tensor([math.nan]))[0])


def test_wilson_closed_form_and_paired_sign():
    lo, hi = wilson_ci(8, 10)
    p, n, z = 0.8, 10, 1.959963984540054
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    assert (lo + hi) / 2 == pytest.approx(centre, rel=1e-12)
    delta, (lo, hi), _ = paired_bootstrap([0, 0, 1, 0] * 10, [1, 1, 1, 0] * 10)
    assert delta == -0.5 and hi < 0
