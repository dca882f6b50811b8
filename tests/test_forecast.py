"""SequenceForecaster: series with known answers, conformal coverage,
covariates, panels, sklearn behaviour, and symbol sequences."""

import pickle
import warnings
from collections import Counter, defaultdict

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, TimeSeriesSplit

from sklearn_rnn import OneHot, SequenceForecaster

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

STRATEGIES = ["recursive", "direct", "seq2seq"]


def _fc(**kw):
    params = dict(hidden_layer_sizes=(16,), max_iter=30, learning_rate_init=0.01,
                  random_state=0, n_threads=1)
    params.update(kw)
    return SequenceForecaster(**params)


def _sine(n, period=25, phase=0.0):
    return np.sin(2 * np.pi * np.arange(n) / period + phase)


# ----------------------------------------------------------------------
# series with known answers
# ----------------------------------------------------------------------

@pytest.mark.parametrize("strategy", STRATEGIES)
def test_sine_continuation(strategy):
    fc = _fc(window=30, horizon=5, strategy=strategy).fit(_sine(400))
    future = _sine(460)[400:]
    np.testing.assert_allclose(fc.predict(5), future[:5], atol=0.05)
    # rolling 5-step forecasts over the continuation
    assert fc.score(future) > 0.99


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_linear_trend_is_extrapolated_with_differencing(strategy):
    # y = 3 t + 7: the first difference is the constant 3, which the network
    # (fed standardised differences, all 0) learns at once; the level comes
    # from undifferencing. Without differencing, the trend leaves the
    # training range and the forecast cannot follow.
    y = 3.0 * np.arange(200) + 7
    truth = 3.0 * np.arange(200, 210) + 7
    fc = _fc(window=10, horizon=10, strategy=strategy, difference=1).fit(y)
    np.testing.assert_allclose(fc.predict(10), truth, rtol=1e-3)
    plain = _fc(window=10, horizon=10, strategy=strategy).fit(y)
    assert np.abs(plain.predict(10) - truth).max() > 10 * np.abs(
        fc.predict(10) - truth).max()


def test_log_differencing_follows_exponential_growth():
    y = 100 * 1.05 ** np.arange(150)
    truth = 100 * 1.05 ** np.arange(150, 156)
    fc = _fc(window=8, horizon=6, strategy="direct", difference=1, log=True).fit(y)
    np.testing.assert_allclose(fc.predict(6), truth, rtol=2e-3)


def test_second_order_differencing_follows_a_quadratic():
    t = np.arange(120.0)
    y = 0.5 * t ** 2 - t + 4
    fc = _fc(window=8, horizon=4, strategy="seq2seq", difference=2).fit(y)
    t_new = np.arange(120.0, 124.0)
    np.testing.assert_allclose(fc.predict(4), 0.5 * t_new ** 2 - t_new + 4,
                               rtol=1e-4)


def _ar1(n, phi=0.8, sigma=1.0, seed=0):
    rng = np.random.RandomState(seed)
    y = np.zeros(n)
    e = rng.normal(scale=sigma, size=n)
    for t in range(1, n):
        y[t] = phi * y[t - 1] + e[t]
    return y


def test_ar1_one_step_forecast_is_the_conditional_mean():
    # for y_t = 0.8 y_{t-1} + e_t the best one-step forecast is 0.8 y_t, with
    # error variance 1: the network should get there, from any history
    y = _ar1(3000)
    fc = _fc(window=5, max_iter=30, learning_rate_init=0.002).fit(y[:2000])
    histories = [y[:t + 1] for t in range(2000, 2999)]
    pred = fc.predict(1, history=histories)[:, 0]
    oracle = 0.8 * y[2000:2999]
    # 1600 training windows leave an estimation error: measured 0.08 RMSE
    # from the oracle (against a noise of 1), an excess MSE of about 2%
    assert np.sqrt(np.mean((pred - oracle) ** 2)) < 0.15
    excess = np.mean((pred - y[2001:3000]) ** 2) - np.mean((oracle - y[2001:3000]) ** 2)
    assert excess < 0.03


def _oracle_coverage(y, cal_origins, test_origins, coverage, h):
    """Coverage over ``test_origins`` of split-conformal intervals around the
    true AR(1) forecasts ``0.8**k y_t``, calibrated on ``cal_origins``: what
    a perfect model would get from the same calibration data."""
    def errors(origins):
        return np.stack([np.abs(y[t + 1:t + 1 + h] - 0.8 ** np.arange(1, h + 1) * y[t])
                         for t in origins])
    cal = np.sort(errors(cal_origins), axis=0)
    q = cal[int(np.ceil((len(cal) + 1) * coverage)) - 1]
    return (errors(test_origins) <= q).mean(axis=0)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_conformal_interval_coverage(strategy, record_property):
    # train on 2000 steps (the last 20% of the origins calibrates), then
    # measure how often 3-step-ahead 80% intervals cover the truth over 1000
    # new origins
    y = _ar1(3200, seed=1)
    fc = _fc(window=5, horizon=3, strategy=strategy, max_iter=10,
             learning_rate_init=0.005).fit(y[:2000])
    origins = np.arange(2000, 3000, 1)
    histories = [y[:t + 1] for t in origins]
    lower, upper = fc.predict_interval(3, coverage=0.8, history=histories)
    truth = np.stack([y[t + 1:t + 4] for t in origins])
    covered = (truth >= lower) & (truth <= upper)
    coverage = covered.mean(axis=0)
    # the calibration origins: the last n of those with 3 steps ahead known
    n_cal = len(fc.conformity_scores_)
    cal_origins = np.arange(4, 2000 - 3)[-n_cal:]
    oracle = _oracle_coverage(y, cal_origins, origins, 0.8, 3)
    record_property("empirical_coverage_80", coverage.tolist())
    record_property("oracle_coverage_80", oracle.tolist())
    print(f"\n{strategy}: empirical coverage of 80% intervals by step ahead: "
          f"{np.round(coverage, 3)} (true model, same calibration data: "
          f"{np.round(oracle, 3)})")
    # With 400 calibration errors the coverage of split conformal varies by
    # about 0.02 (sd) from one calibration set to another: this series' set
    # happens to give 0.85 even around the true model's forecasts. Ours must
    # match that, and stay within 3.5 sd of the nominal 0.8.
    assert np.all(np.abs(coverage - oracle) < 0.025)
    assert np.all(np.abs(coverage - 0.8) < 0.07)
    # wider intervals further ahead: AR(1) errors accumulate
    width = (upper - lower).mean(axis=0)
    assert width[0] < width[2]
    # and a higher coverage gives wider intervals
    lo95, hi95 = fc.predict_interval(3, coverage=0.95, history=histories)
    assert np.all(hi95 - lo95 > upper - lower)


def test_conformal_quantile_rule():
    fc = _fc(window=5, horizon=2, max_iter=2).fit(_ar1(300))
    scores = fc.conformity_scores_
    n = len(scores)
    lo, hi = fc.predict_interval(2, coverage=0.5)
    rank = int(np.ceil((n + 1) * 0.5))
    q = np.sort(scores[:, :, 0], axis=0)[rank - 1]
    np.testing.assert_allclose((hi - lo) / 2, q)
    # too few calibration errors for the coverage asked: infinite
    lo, hi = fc.predict_interval(2, coverage=1 - 0.5 / (n + 1))
    assert np.all(np.isinf(hi))


# ----------------------------------------------------------------------
# covariates, panels, channels
# ----------------------------------------------------------------------

def test_future_covariates_carry_the_signal():
    # y_t = 2 x_t + small noise, with x random and known in advance: only a
    # model that reads the future covariate can forecast
    rng = np.random.RandomState(0)
    x = rng.normal(size=(900, 1))
    y = 2 * x[:, 0] + 0.05 * rng.normal(size=900)
    for strategy in ["recursive", "direct"]:
        with_x = _fc(window=4, horizon=2, strategy=strategy, future_covariates="all",
                     max_iter=20).fit(x[:800], y[:800])
        assert with_x.score(x[800:], y[800:]) > 0.95
        pred = with_x.predict(2, X_future=x[800:802])
        np.testing.assert_allclose(pred, 2 * x[800:802, 0], atol=0.3)
    without = _fc(window=4, horizon=2, max_iter=20).fit(y[:800])
    assert without.score(y[800:]) < 0.1


def test_past_covariates_with_direct_strategy():
    # y_t = x_{t-1}: the covariate leads by one step, known up to the origin
    rng = np.random.RandomState(1)
    x = rng.normal(size=(700, 1))
    y = np.r_[0.0, x[:-1, 0]]
    fc = _fc(window=3, horizon=1, strategy="direct", max_iter=30).fit(x[:600], y[:600])
    assert fc.score(x[600:], y[600:]) > 0.95
    with pytest.raises(ValueError, match="future_covariates"):
        _fc(strategy="recursive").fit(x[:600], y[:600])


def test_panel_and_channels():
    panel = [_sine(300, phase=p) for p in (0.0, 1.0, 2.0)]
    fc = _fc(window=25, horizon=4, strategy="seq2seq").fit(panel)
    pred = fc.predict(4)
    assert pred.shape == (3, 4)
    truth = np.stack([_sine(304, phase=p)[300:] for p in (0.0, 1.0, 2.0)])
    np.testing.assert_allclose(pred, truth, atol=0.1)
    # two channels of one series
    both = np.column_stack([_sine(300), np.cos(2 * np.pi * np.arange(300) / 25)])
    fc2 = _fc(window=25, horizon=3, strategy="direct").fit(both)
    assert fc2.predict(3).shape == (3, 2)
    lo, hi = fc2.predict_interval(3)
    assert lo.shape == (3, 2)
    # a history given by the user, instead of the training end
    np.testing.assert_allclose(fc2.predict(3, history=both),
                               fc2.predict(3))


def test_forecast_from_history_equals_forecast_from_training_end():
    y = _sine(300)
    fc = _fc(window=20, horizon=3, strategy="recursive", difference=1).fit(y)
    np.testing.assert_array_equal(fc.predict(6), fc.predict(6, history=y))
    np.testing.assert_array_equal(fc.predict(6), fc.predict(6, history=y[-21:]))


# ----------------------------------------------------------------------
# scikit-learn behaviour
# ----------------------------------------------------------------------

def test_grid_search_with_time_series_split():
    y = _sine(500) + 0.05 * np.random.RandomState(0).normal(size=500)
    grid = {"window": [3, 25], "strategy": ["recursive", "seq2seq"]}
    base = _fc(horizon=3, max_iter=10)
    searches = [GridSearchCV(base, grid, cv=TimeSeriesSplit(n_splits=3), n_jobs=n)
                .fit(y) for n in (1, 2)]
    np.testing.assert_array_equal(searches[0].cv_results_["mean_test_score"],
                                  searches[1].cv_results_["mean_test_score"])
    # a window of 3 steps cannot see the period of 25
    assert searches[0].best_params_["window"] == 25
    assert searches[0].best_score_ > 0.9
    np.testing.assert_array_equal(searches[0].predict(3), searches[1].predict(3))


def test_reproducible_pickle_and_thread_count():
    y = _ar1(400)
    a = _fc(window=6, horizon=2, dropout=0.0, max_iter=5).fit(y)
    b = clone(a).fit(y)
    np.testing.assert_array_equal(a.predict(2), b.predict(2))
    c = clone(a).set_params(n_threads=2).fit(y)
    np.testing.assert_array_equal(a._network.params, c._network.params)
    d = pickle.loads(pickle.dumps(a))
    np.testing.assert_array_equal(d.predict(2), a.predict(2))
    np.testing.assert_array_equal(d.predict_interval(2)[0], a.predict_interval(2)[0])


def test_float64_and_early_stopping():
    y = _sine(300)
    fc = _fc(window=25, horizon=2, strategy="seq2seq", dtype="float64",
             early_stopping=True, max_iter=40).fit(y)
    assert fc._network.dtype == np.float64
    assert len(fc.validation_scores_) == fc.n_iter_
    assert fc.best_validation_score_ > 0.9


# ----------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:only 19 forecast origins")
def test_errors():
    y = _sine(100)
    with pytest.raises(ValueError, match="at least 36"):
        _fc(window=30, horizon=5, strategy="direct", difference=1).fit(y[:35])
    with pytest.raises(ValueError, match="strictly positive"):
        _fc(log=True).fit(y)
    with pytest.raises(ValueError, match="bidirectional"):
        _fc(bidirectional=True, strategy="seq2seq").fit(y)
    with pytest.raises(ValueError, match="NaN"):
        _fc().fit(np.r_[y, np.nan])
    with pytest.raises(TypeError, match="numeric"):
        _fc(target_type="continuous").fit(np.array(["a", "b"] * 50, dtype=object))
    with pytest.raises(ValueError, match="window"):
        _fc(window=0).fit(y)
    fc = _fc(window=5, horizon=2, strategy="direct", max_iter=2).fit(y)
    with pytest.raises(ValueError, match="up to horizon=2"):
        fc.predict(3)
    with pytest.raises(ValueError, match="positive integer"):
        fc.predict(0)
    with pytest.raises(ValueError, match="coverage"):
        fc.predict_interval(2, coverage=1.5)
    with pytest.raises(ValueError, match="channels"):
        fc.predict(2, history=np.ones((20, 2)))
    with pytest.raises(ValueError, match="window \\+ difference"):
        fc.predict(2, history=y[:3])
    with pytest.raises(ValueError, match="symbols"):
        fc.sample(3)
    with pytest.warns(UserWarning, match="only 19 forecast origins"):
        _fc(window=5, max_iter=1).fit(y)
    no_cal = _fc(window=5, calibration_fraction=0, max_iter=2).fit(y)
    assert no_cal.conformity_scores_ is None
    with pytest.raises(ValueError, match="calibration_fraction > 0"):
        no_cal.predict_interval(1)
    x = np.random.RandomState(0).normal(size=(100, 1))
    cov = _fc(window=5, future_covariates=[0], max_iter=2).fit(x, y)
    with pytest.raises(ValueError, match="X_future"):
        cov.predict(2)
    with pytest.raises(ValueError, match="outside"):
        _fc(future_covariates=[3]).fit(x, y)
    with pytest.raises(ValueError, match="one row per step"):
        _fc().fit(x[:50], y)


# ----------------------------------------------------------------------
# symbols
# ----------------------------------------------------------------------

def _entropy_given_last(text, k):
    """Empirical H(next symbol | previous k symbols), in bits."""
    counts = defaultdict(Counter)
    for i in range(k, len(text)):
        counts[text[i - k:i]][text[i]] += 1
    total, bits = 0, 0.0
    for nxt in counts.values():
        n = sum(nxt.values())
        for c in nxt.values():
            bits -= c * np.log2(c / n)
            total += c
    return bits / total


def test_stateful_training_learns_beyond_the_window():
    # 'a' then six 'x', again and again: to know when the run of x ends, a
    # model must count 7 steps back, and the windows hold 4. Without a state
    # carried from window to window, no context longer than 4 symbols is ever
    # seen in training, and 4 symbols leave `bound` bits of uncertainty.
    text = ("a" + "x" * 6) * 300
    bound = _entropy_given_last(text, 4)
    # Counting past the window is learnt late: after 20 epochs, seeds 1-4 are
    # below 0.03 bits per symbol but seed 0 is still at 0.51 on one CPU; with
    # up to 40 epochs (early stopping), all five end at 0.000-0.008
    lm = SequenceForecaster(window=4, hidden_layer_sizes=(16,), max_iter=40,
                            batch_size=8, learning_rate_init=0.02, random_state=0,
                            n_threads=1).fit(text)
    bits = lm.bits_per_symbol(text[:280])
    assert bits < 0.5 * bound, (bits, bound)
    assert lm.score(text[:280]) == -bits
    # greedy generation continues the pattern
    out = lm.sample(21, prompt=text[:30], temperature=0)
    assert out == text[30:51]


def test_sampling_temperature_and_reproducibility():
    rng = np.random.RandomState(0)
    text = "".join(rng.choice(list("abcd"), p=[0.7, 0.1, 0.1, 0.1], size=2000))
    lm = SequenceForecaster(window=10, hidden_layer_sizes=(8,), max_iter=5,
                            learning_rate_init=0.01, random_state=0,
                            n_threads=1).fit(text)
    s1 = lm.sample(500, temperature=1.0, random_state=3)
    assert s1 == lm.sample(500, temperature=1.0, random_state=3)
    cold = lm.sample(500, temperature=0.3, random_state=3)
    hot = lm.sample(500, temperature=3.0, random_state=3)
    assert set(s1) <= set("abcd")
    # the frequent symbol dominates more when cold: about 0.7 at T=1
    assert cold.count("a") > s1.count("a") > hot.count("a")
    assert 0.6 < s1.count("a") / 500 < 0.8
    # an iid source: about its entropy, 1.357 bits
    assert abs(lm.bits_per_symbol(text[:1000]) - 1.357) < 0.1


def test_integer_and_token_symbols():
    ids = np.tile([7, 2, 9, 2, 5], 200)
    lm = SequenceForecaster(target_type="symbols", window=10, hidden_layer_sizes=(16,),
                            max_iter=10, batch_size=4, learning_rate_init=0.02,
                            random_state=0, n_threads=1).fit(ids)
    np.testing.assert_array_equal(lm.symbols_, [2, 5, 7, 9])
    np.testing.assert_array_equal(lm.sample(10, prompt=[7, 2], temperature=0),
                                  ids[2:12])
    with pytest.raises(ValueError, match="never seen"):
        lm.bits_per_symbol(np.array([7, 2, 3]))
    # words through OneHot, independent sentences, with an embedding
    sentences = ["the cat sat on the mat", "the dog sat on the log"] * 40
    oh = OneHot().fit(sentences)
    lm2 = SequenceForecaster(hidden_layer_sizes=(16,), embedding_dim=8, max_iter=40,
                             learning_rate_init=0.02, random_state=0,
                             n_threads=1).fit(oh.transform(sentences))
    words = oh.get_feature_names_out()
    nxt = lm2.sample(4, prompt=oh.transform(["the cat"]), temperature=0)
    assert " ".join(words[nxt]) == "sat on the mat"
    # after 'the', cat/dog/mat/log: 2 bits; everything else is determined
    assert lm2.bits_per_symbol(oh.transform(sentences[:2])) < 0.8


def test_symbol_errors():
    lm = SequenceForecaster(window=5, hidden_layer_sizes=(4,), max_iter=1,
                            random_state=0, n_threads=1).fit("abababab")
    with pytest.raises(ValueError, match="never seen"):
        lm.bits_per_symbol("abc")
    with pytest.raises(ValueError, match="temperature"):
        lm.sample(3, temperature=-1)
    with pytest.raises(ValueError, match="n_steps"):
        lm.sample(0)
    with pytest.raises(ValueError, match="forecasts series"):
        lm.predict_interval(2)
    with pytest.raises(ValueError, match="single symbol"):
        SequenceForecaster().fit("aaaa")
    with pytest.raises(TypeError, match="integers"):
        SequenceForecaster(target_type="symbols").fit(np.array([0.5, 1.5, 2.5]))
    with pytest.raises(ValueError, match="left to right"):
        SequenceForecaster(bidirectional=True, strategy="direct").fit("abab")
    assert lm.sample(5, random_state=0) == lm.sample(5, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        pickle.loads(pickle.dumps(lm)).sample(5, random_state=0)
