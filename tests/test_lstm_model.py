import dataclasses

import numpy as np

import pytest
import torch

from v3_common import ConfigError
from v3_interval_scores import QUANTILES, pinball_loss
from v3_lstm_model import (ModelConfig, V3LSTMModel, check_model_config, count_parameters,
                           monotone_quantiles, quantile_anchor, quantile_pinball)


def test_guide_architecture_shapes_and_attention():
    torch.manual_seed(0)
    model = V3LSTMModel(ModelConfig()).eval()
    assert model.lstm.bidirectional and model.lstm.num_layers == 3
    assert model.lstm.hidden_size == 128 and model.lstm.input_size == 30
    assert model.lstm.dropout == pytest.approx(0.3)
    assert isinstance(model.input_norm, torch.nn.LayerNorm)
    assert any(isinstance(m, torch.nn.LayerNorm) for m in model.head)
    x = torch.randn(4, 60, 30)  # (B, T, F)
    out, w = model(x, return_attention=True)
    assert out.shape == (4,) and w.shape == (4, 60)
    torch.testing.assert_close(w.sum(dim=1), torch.ones(4))
    assert (w >= 0).all()
    torch.testing.assert_close(model(x), out)


def test_attention_weights_depend_on_the_input():
    torch.manual_seed(0)
    model = V3LSTMModel(ModelConfig(input_size=5, hidden_size=8, num_layers=1)).eval()
    _, w1 = model(torch.randn(1, 10, 5), return_attention=True)
    _, w2 = model(torch.randn(1, 10, 5), return_attention=True)
    assert not torch.allclose(w1, w2)


def test_without_attention_uses_last_step():
    model = V3LSTMModel(ModelConfig(input_size=5, hidden_size=8, num_layers=1,
                                    use_attention=False)).eval()
    out, w = model(torch.randn(2, 10, 5), return_attention=True)
    assert out.shape == (2,) and w is None and model.attention is None


def test_config_round_trip_and_parameter_count():
    c = ModelConfig(hidden_size=64)
    d = c.to_dict()
    assert ModelConfig.from_dict({**d, "unknown_field": 1}) == c
    small = count_parameters(V3LSTMModel(dataclasses.replace(c, hidden_size=16)))
    assert small < count_parameters(V3LSTMModel(c))


@pytest.mark.parametrize("over", [{"hidden_size": 0}, {"hidden_size": 12.5}, {"num_layers": 0},
                                  {"num_layers": "3"}, {"dropout": 1.0}, {"dropout": -0.1},
                                  {"dropout": "0.3"}])
def test_check_model_config_refuses_a_model_that_cannot_be_built(over):
    with pytest.raises(ConfigError, match=r"need integers >= 1 and a dropout in \[0, 1\) "
                                          r"\(the guide uses 128, 3 and 0.3\)"):
        check_model_config(dataclasses.replace(ModelConfig(), **over))


def test_check_model_config_accepts_the_guide_and_the_demo():
    check_model_config(ModelConfig())
    check_model_config(ModelConfig(hidden_size=32, num_layers=2, dropout=0))


# -- the quantile head ---------------------------------------------------------------------


def test_quantile_head_is_on_by_default_and_the_point_forecast_is_unchanged():
    assert ModelConfig().quantiles == QUANTILES == (0.05, 0.10, 0.25, 0.50, 0.75, 0.90, 0.95)
    assert ModelConfig().quantile_weight == 1.0
    cfg = ModelConfig(input_size=5, hidden_size=8, num_layers=2)
    torch.manual_seed(0)
    with_head = V3LSTMModel(cfg).eval()
    torch.manual_seed(0)
    without = V3LSTMModel(dataclasses.replace(cfg, quantiles=())).eval()
    assert without.quantile_head is None and not without.has_quantiles and with_head.has_quantiles
    # same seed: the trunk and point head are the old model's weights exactly
    sd = without.state_dict()
    assert set(with_head.state_dict()) - set(sd) == {"quantile_head.weight", "quantile_head.bias"}
    assert all(torch.equal(with_head.state_dict()[k], v) for k, v in sd.items())
    x = torch.randn(3, 10, 5)
    point, q = with_head.forward_with_quantiles(x)
    assert point.shape == (3,) and q.shape == (3, 7)
    torch.testing.assert_close(point, with_head(x), rtol=0, atol=0)
    torch.testing.assert_close(with_head(x), without(x), rtol=0, atol=0)
    p0, q0 = without.forward_with_quantiles(x)
    assert q0 is None
    torch.testing.assert_close(p0, without(x), rtol=0, atol=0)


def test_untrained_head_starts_near_the_standard_normal_quantiles():
    """With zero weights the initial bias gives N(0, 1)'s quantiles (the standardised target)."""
    model = V3LSTMModel(ModelConfig(input_size=5, hidden_size=8, num_layers=1))
    with torch.no_grad():
        model.quantile_head.weight.zero_()
    _, q = model.forward_with_quantiles(torch.randn(2, 6, 5))
    ref = torch.tensor([-1.6449, -1.2816, -0.6745, 0.0, 0.6745, 1.2816, 1.6449])
    torch.testing.assert_close(q[0], ref, rtol=0, atol=1e-3)


@pytest.mark.parametrize("scale", [1e-30, 1.0, 1e3, 1e6, 1e12, 1e18])
def test_quantiles_never_cross_for_an_untrained_model_on_extreme_inputs(scale):
    torch.manual_seed(1)
    for _ in range(3):
        model = V3LSTMModel(ModelConfig(input_size=5, hidden_size=8, num_layers=2)).eval()
        with torch.no_grad():                       # adversarial: huge, mixed-sign head weights
            model.quantile_head.weight.normal_(0, 1e4)
            model.quantile_head.bias.normal_(0, 1e4)
        x = torch.randn(64, 12, 5) * scale
        x[::2] = -x[::2].abs()
        x[1::4, :, 0] = scale                        # constant columns, sign patterns
        _, q = model.forward_with_quantiles(x)
        assert torch.isfinite(q).all()
        assert (q[:, 1:] >= q[:, :-1]).all()


def test_monotone_quantiles_never_cross_even_for_adversarial_raw_outputs():
    gen = torch.Generator().manual_seed(2)
    raw = torch.randn(4096, 7, generator=gen) * torch.logspace(-30, 30, 4096).unsqueeze(1)
    raw[:5] = torch.tensor([[1e30, -1e30, 1e30, -1e30, 1e30, -1e30, 1e30],
                            [-1e30] * 7, [1e30] * 7, [0.0] * 7, [-1e-30] * 7])
    for dtype, limit in ((torch.float32, 1e30), (torch.float64, 1e30), (torch.float16, 1e4)):
        r = raw.clamp(-limit, limit).to(dtype)      # (fp16 autocast: its range is 6.5e4)
        q = monotone_quantiles(r, quantile_anchor(QUANTILES))
        assert torch.isfinite(q).all(), dtype
        assert (q[:, 1:] >= q[:, :-1]).all(), dtype
    # the anchor is the median's output, the others are softplus gaps towards it
    q = monotone_quantiles(torch.tensor([[0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0]]), 3)
    g = float(torch.nn.functional.softplus(torch.tensor(0.0)))
    torch.testing.assert_close(q[0], torch.tensor([2 - 3 * g, 2 - 2 * g, 2 - g, 2, 2 + g, 2 + 2 * g,
                                                   2 + 3 * g]))
    assert quantile_anchor(QUANTILES) == 3 and quantile_anchor((0.1, 0.3, 0.9)) == 1


def test_quantile_pinball_is_the_numpy_pinball_loss():
    y = torch.tensor([0.0, 1.0, -2.0, 0.5], dtype=torch.float64)
    q = torch.tensor([[-1.0, 0.0, 1.0]] * 4, dtype=torch.float64)
    levels = (0.1, 0.5, 0.9)
    got = quantile_pinball(q, y, torch.tensor(levels, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(got, pinball_loss(y.numpy(), q.numpy(), levels), rtol=0, atol=1e-15)
    # hand-computed: y = 1 against q = -1 at tau 0.1: 0.1 * 2; y = -2 against q = 1 at 0.9: 0.1 * 3
    assert got[1, 0] == pytest.approx(0.2) and got[2, 2] == pytest.approx(0.3)


@pytest.mark.parametrize("over", [{"quantiles": (0.5, 0.1)}, {"quantiles": (0.1, 0.1, 0.5)},
                                  {"quantiles": (0.0, 0.5)}, {"quantiles": (0.5, 1.0)},
                                  {"quantiles": (0.5, float("nan"))}, {"quantiles": ("0.5",)},
                                  {"quantiles": (True,)}, {"quantiles": 0.5}])
def test_check_model_config_refuses_bad_quantiles(over):
    with pytest.raises(ConfigError, match=r"quantiles=.*strictly inside \(0, 1\), sorted and unique"):
        check_model_config(dataclasses.replace(ModelConfig(), **over))


@pytest.mark.parametrize("w", [-0.1, float("nan"), float("inf"), "1", True])
def test_check_model_config_refuses_a_bad_quantile_weight(w):
    with pytest.raises(ConfigError, match="quantile_weight=.*a finite number >= 0"):
        check_model_config(dataclasses.replace(ModelConfig(), quantile_weight=w))


@pytest.mark.parametrize("scale", ["EWMA", "garch", None, 1])
def test_check_model_config_refuses_an_unknown_quantile_scale(scale):
    with pytest.raises(ConfigError, match="quantile_scale=.*need one of 'ewma', 'har', 'none'"):
        check_model_config(dataclasses.replace(ModelConfig(), quantile_scale=scale))


def test_quantile_config_round_trips_through_json_and_stays_hashable():
    import json
    c = ModelConfig(quantiles=(0.1, 0.5, 0.9), quantile_weight=0.5)
    back = ModelConfig.from_dict(json.loads(json.dumps(c.to_dict())))  # a list in JSON
    assert back == c and isinstance(back.quantiles, tuple) and hash(back) == hash(c)
    assert json.loads(json.dumps(c.to_dict())) == c.to_dict()   # settings read back compare equal
    check_model_config(ModelConfig(quantiles=()))
    check_model_config(ModelConfig(quantiles=(0.5,), quantile_weight=0))
