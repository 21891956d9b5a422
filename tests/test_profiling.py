import pytest
import torch

from xtc.analysis import profiling


def _row(b, h, w, ms):
    return {"batch_size": b, "height": h, "width": w, "ms_per_step": ms}


def test_cost_model_recovers_a_linear_cost():
    # 5 ms fixed + 40 ms per megapixel, by hand: 1x(32x64) = 0.002048 Mpx -> 5.08192 ms
    rows = [_row(b, h, w, 5 + 40 * b * h * w / 1e6)
            for b in (1, 2, 4) for h, w in ((32, 64), (64, 128))]
    cost = profiling.fit_cost_model(rows)
    assert cost["fixed_ms"] == pytest.approx(5.0, abs=1e-9)
    assert cost["ms_per_megapixel"] == pytest.approx(40.0, rel=1e-9)
    assert cost["max_relative_error"] < 1e-9


def test_cost_model_needs_two_sizes():
    with pytest.raises(ValueError, match="two different"):
        profiling.fit_cost_model([_row(2, 32, 64, 10.0), _row(2, 32, 64, 11.0)])


def test_scaling_grid_times_every_cell_and_skips_the_large_ones(tiny_config):
    cfg = tiny_config()
    grid = profiling.scaling_grid(cfg, [(32, 64)], [1, 2], repeats=1, max_pixels=32 * 64)
    assert [r["batch_size"] for r in grid["rows"]] == [1] and grid["skipped"] == ["32x64_b2"]
    row = grid["rows"][0]
    assert row["ms_per_step"] > 0 and row["images_per_s"] == pytest.approx(1e3 / row["ms_per_step"])


def test_timing_trains_a_copy_not_the_model(tiny_config):
    cfg = tiny_config()
    model = profiling.build_experiment(cfg, "cpu", optimizer=False, num_classes=7).model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    times = profiling.time_training_step(cfg, profiling.synthetic_batch(2, 32, 64), model,
                                         repeats=2)
    assert len(times) == 2 and all(t > 0 for t in times)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_resolution_must_fit_the_encoder(tiny_config):
    with pytest.raises(ValueError, match="multiples of 32"):
        profiling.scaling_grid(tiny_config(), [(30, 64)], [1], repeats=1)
