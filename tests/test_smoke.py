import pytest

from v3_colab_training import main


@pytest.mark.slow
def test_demo_cli_runs_offline(tmp_path):
    rc = main(["--demo", "--base-dir", str(tmp_path), "--epochs", "1", "--no-progress",
               "--coins", "BTCUSDT", "--timeframes", "1h"])
    assert rc == 0
    assert (tmp_path / "all_models" / "v3_model_BTCUSDT_1h.pt").exists()
