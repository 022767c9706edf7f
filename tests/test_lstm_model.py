import dataclasses

import pytest
import torch

from v3_common import ConfigError
from v3_lstm_model import ModelConfig, V3LSTMModel, check_model_config, count_parameters


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
