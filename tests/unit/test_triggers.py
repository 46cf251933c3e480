"""Token triggers: a planted expert that fires exactly on one token, positions counted by hand, the
early-vs-late statistic against hand-made firing counts."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from moelens import InvalidInputError
from moelens.analysis.drivers import DriverEffects
from moelens.analysis.triggers import EarlyLate, TokenTriggers, token_triggers

from .planted import PLANTED_EXPERT, PLANTED_TOKEN, planted_model

BOS = 1


@pytest.fixture(scope="module")
def model():
    return planted_model()


def _texts(seed: int = 0, n: int = 12) -> torch.Tensor:
    """Texts of length 14 (BOS + 13 tokens), the planted token at random places, more often early."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 97, (n, 14), generator=gen)
    ids[ids == PLANTED_TOKEN] = 43
    ids[:, 0] = BOS
    for i in range(n):
        ids[i, 1 + i % 3] = PLANTED_TOKEN
        if i % 4 == 0:
            ids[i, 10] = PLANTED_TOKEN
        if i % 5 == 0:
            ids[i, 13] = PLANTED_TOKEN  # the last kept token: the last decile
    return ids


def test_planted_expert_fires_exactly_on_its_token(model):
    ids = _texts()
    _, cache = model.run_with_cache(ids, names_filter="blocks.0.moe.hook_topk_indices")
    fired = (cache["blocks.0.moe.hook_topk_indices"] == PLANTED_EXPERT).any(-1)
    assert torch.equal(fired, ids == PLANTED_TOKEN)  # the premise of the next tests


def test_top_tokens_puts_the_planted_token_first(model):
    trig = token_triggers(model, _texts(), [(0, PLANTED_EXPERT), (1, 0)], special_ids=[BOS], progress=False)
    top = trig.top_tokens(5, min_count=3)
    planted = top[(top.layer == 0) & (top.expert == PLANTED_EXPERT)]
    assert planted.token_id.iloc[0] == PLANTED_TOKEN and planted.rate.iloc[0] == 1.0
    assert planted["count"].iloc[0] == int((_texts() == PLANTED_TOKEN).sum())
    assert (planted.rate.iloc[1:] == 0).all()  # fires on nothing else
    assert (top["count"] >= 3).all()
    # min_count keeps rare tokens off the list
    assert len(trig.top_tokens(5, min_count=1000)) == 0


def test_by_position_equals_hand_counts(model):
    ids = _texts(1)
    trig = token_triggers(model, ids, [(0, PLANTED_EXPERT)], special_ids=[BOS], progress=False)
    frame = trig.by_position(bins=4)
    # independent count: kept tokens are positions 1..13 (13 per text), rank = position - 1
    kept = ids[:, 1:]
    planted = kept == PLANTED_TOKEN
    rank = torch.arange(13).expand_as(kept)
    rel = (4 * rank) // 13
    rel_rows = frame[frame.scale == "relative"]
    for b in range(4):
        row = rel_rows[rel_rows.bin == b].iloc[0]
        assert row.tokens == int((rel == b).sum()) and row.fires == int(planted[rel == b].sum())
    abs_rows = frame[frame.scale == "absolute"].set_index("bin")
    assert abs_rows.loc[0, "tokens"] == 0  # BOS excluded
    for p in range(1, 14):
        assert abs_rows.loc[p, "tokens"] == 12 and abs_rows.loc[p, "fires"] == int((ids[:, p] == PLANTED_TOKEN).sum())


def test_special_tokens_are_excluded_by_default_and_can_be_kept(model):
    ids = _texts()
    ids[:, 0] = PLANTED_TOKEN  # the planted token in the BOS slot: "early" only because of position 0
    dropped = token_triggers(model, ids, [(0, PLANTED_EXPERT)], special_ids=[PLANTED_TOKEN], progress=False)
    kept = token_triggers(model, ids, [(0, PLANTED_EXPERT)], exclude_special=False, progress=False)
    assert dropped.n_tokens == int((ids != PLANTED_TOKEN).sum()) and not dropped.fired.any()
    assert kept.n_tokens == ids.numel() and int(kept.fired.sum()) == int((ids == PLANTED_TOKEN).sum())


def test_early_vs_late_against_hand_counts(model):
    ids = _texts(2, n=30)
    trig = token_triggers(model, ids, [(0, PLANTED_EXPERT)], special_ids=[BOS], progress=False)
    res = trig.early_vs_late(n_boot=300, seed=1)
    kept = ids[:, 1:] == PLANTED_TOKEN  # 13 kept tokens: decile floor(10 r / 13): first = rank 0..1, last = rank 12
    rank = torch.arange(13)
    first, last = (10 * rank) // 13 == 0, (10 * rank) // 13 == 9
    def rate(sel):
        return float(kept[:, sel].float().mean())
    assert res.rate_first == pytest.approx(rate(first)) and res.rate_rest == pytest.approx(rate(~first))
    assert res.rate_last == pytest.approx(rate(last))
    assert res.diff == pytest.approx(rate(first) - rate(~first))
    assert res.last_diff == pytest.approx(rate(last) - rate(~last))
    assert res.ci[0] <= res.diff <= res.ci[1] and res.ci[0] > 0  # planted early: the interval excludes 0
    assert res.n_selected == 1 and res.n_control > 0 and 0 <= res.control_share_early <= 1
    assert isinstance(res, EarlyLate) and "holds=" in repr(res)
    assert res.per_expert.selected.iloc[0] and len(res.summary()) == 11


def test_early_vs_late_is_null_for_a_position_free_expert(model):
    """An expert that fires at one fixed relative rate everywhere has diff 0 and a CI around 0."""
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(3, 97, (60, 21), generator=gen)
    ids[ids == PLANTED_TOKEN] = 43
    ids[:, 0] = BOS
    ids[:, 1::4] = PLANTED_TOKEN  # positions 1, 5, 9, 13, 17: one every 4 tokens, first decile and rest alike-ish
    trig = token_triggers(model, ids, [(0, PLANTED_EXPERT)], special_ids=[BOS], progress=False)
    res = trig.early_vs_late(n_boot=200)
    assert res.ci[0] <= res.diff <= res.ci[1]


def test_selection_forms_and_round_trip(model, tmp_path):
    ids = _texts()
    effects = DriverEffects(torch.rand(2, 4, dtype=torch.float64), (0, 1), 4, "exact")
    from_effects = token_triggers(model, ids, effects, special_ids=[BOS], progress=False)
    assert len(from_effects.selection) == 8
    frame = pd.DataFrame({"layer": [0, 1], "expert": [PLANTED_EXPERT, 2]})
    trig = token_triggers(model, ids, frame, special_ids=[BOS], progress=False)
    assert trig.selection == [(0, PLANTED_EXPERT), (1, 2)]
    back = TokenTriggers.load(trig.save(tmp_path / "trig"))
    assert back.selection == trig.selection and torch.equal(back.fired, trig.fired)
    assert back.early_vs_late(n_boot=50).diff == trig.early_vs_late(n_boot=50).diff
    long = trig.to_frame()
    assert len(long) == 2 * trig.n_tokens and set(long.columns) >= {"token", "fired", "gate", "rank"}
    assert (long.gate[~long.fired] == 0).all() and (long.gate[long.fired] > 0).all()
    trig.plot(tmp_path / "t.png")
    assert repr(trig).startswith("TokenTriggers(2 experts [L0E3, L1E2]")


def test_bad_selections(model):
    ids = _texts()
    with pytest.raises(InvalidInputError, match="layer 5 is not an MoE layer"):
        token_triggers(model, ids, [(5, 0)], progress=False)
    with pytest.raises(InvalidInputError, match="expert 9 is out of range"):
        token_triggers(model, ids, [(0, 9)], progress=False)
    with pytest.raises(InvalidInputError, match="without 'layer' and 'expert'"):
        token_triggers(model, ids, pd.DataFrame({"x": [1]}), progress=False)
    with pytest.raises(InvalidInputError, match="non-empty list"):
        token_triggers(model, ids, [], progress=False)


def _placed(where: str, n: int = 120, seed: int = 3) -> torch.Tensor:
    """Texts of BOS + 20 tokens with the planted token at one place per text: in the first two kept
    tokens ("early"), in the last two ("late"), or uniformly at random ("null")."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 97, (n, 21), generator=gen)
    ids[ids == PLANTED_TOKEN] = 43
    ids[:, 0] = BOS
    lo, hi = {"early": (1, 3), "late": (19, 21), "null": (1, 21)}[where]
    ids[torch.arange(n), torch.randint(lo, hi, (n,), generator=gen)] = PLANTED_TOKEN
    return ids


@pytest.mark.parametrize(("where", "verdict"), [("early", "holds"), ("late", "does not hold"), ("null", "undecided")])
def test_planted_early_trigger_reaches_the_right_verdict(model, where, verdict):
    """The decision uses the bootstrap intervals against frequency-matched controls: a planted early
    trigger holds, a planted late one does not, a position-free one is not declared."""
    trig = token_triggers(model, _placed(where), [(0, PLANTED_EXPERT)], special_ids=[BOS], progress=False)
    res = trig.early_vs_late(n_boot=500, seed=0)
    assert res.verdict == verdict, res
    assert res.holds == (verdict == "holds") and res.n_matched >= 1
    assert res.matched_ci[0] <= res.matched_diff <= res.matched_ci[1]


def test_sensitivity_reports_protocols_and_token_sets(model):
    from moelens.analysis.triggers.sensitivity import early_late_sensitivity

    ids = _placed("early", n=40)
    ids[:, 0] = PLANTED_TOKEN  # the planted token also sits in the BOS slot
    frame = early_late_sensitivity(model, ids, {"planted": [(0, PLANTED_EXPERT)], "other": [(1, 0)]},
                                   template_ids=[PLANTED_TOKEN], n_boot=100)
    assert list(frame.protocol) == ["planted"] * 3 + ["other"] * 3
    planted = frame[frame.protocol == "planted"].set_index("tokens")
    assert planted.loc["special included", "verdict"] == "holds"
    # excluding the planted token as a "template" token leaves the expert nothing to fire on
    assert planted.loc["special + template excluded", "diff"] == 0.0
