"""The benchmark commands run end to end on tiny sizes, so they cannot rot.

They are benchmarks, not tests: nothing here asserts a timing, only that the commands work and write
what they promise with sane contents."""

from __future__ import annotations

import json

import pandas as pd
import torch
import pytest

from gsa_search import bench, bench_train
from gsa_search.measure import count_flops
from runners import bench_cmds
from runners.cli import main


def test_block_benchmark_writes_csv_plot_and_ratios(tmp_path, capsys):
    assert main(["bench", "blocks", "--sizes", "6", "8", "--batch", "2", "--channels", "8", "--heads", "2",
                 "--dim-key", "4", "--rounds", "1", "--repeats", "1", "--out", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "blocks.csv")
    assert {"conv", "gsa", "gsa_content", "gsa_positional", "gsa_2d_r3", "explicit", "mhsa"} <= set(table["block"])
    assert set(table["size"]) == {6, 8}
    assert (table["fwd_bwd_ms"] > 0).all() and (table["activation_mb"] > 0).all()
    assert (tmp_path / "blocks.png").stat().st_size > 0
    ratios = pd.read_csv(tmp_path / "ratios.csv", index_col=0)
    assert "gsa/conv" in ratios.columns
    # FLOPs in the table are the measurement API's, per image
    conv = table[(table.block == "conv") & (table["size"] == 8)].iloc[0]
    assert conv["flops"] == 8 * 8 * 8 * 8 * 9
    assert "ratios" in capsys.readouterr().out


@pytest.mark.parametrize("flag,channels_last", [([], False), (["--channels-last"], True), (["--no-channels-last"], False)])
def test_block_benchmark_times_blocks_in_the_chosen_layout(tmp_path, monkeypatch, flag, channels_last):
    """NCHW by default (the module benchmark as before); ``--channels-last`` puts every block's
    weights and the input in that format, and the table says which."""
    seen = set()
    real = bench.time_block

    def spy(model, x, **kwargs):
        weights = [p for p in model.parameters() if p.dim() == 4]
        seen.add((x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(),
                  all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)))
        return real(model, x, **kwargs)

    monkeypatch.setattr(bench, "time_block", spy)
    assert main(["bench", "blocks", "--sizes", "6", "--batch", "2", "--channels", "8", "--heads", "2", "--dim-key", "4",
                 "--rounds", "1", "--repeats", "1", "--out", str(tmp_path), *flag]) == 0
    assert seen == {(channels_last, channels_last)} if channels_last else {s[0] for s in seen} == {False}
    assert set(pd.read_csv(tmp_path / "blocks.csv")["channels_last"]) == {channels_last}


def test_bench_ratios_divide_by_the_conv_row():
    table = pd.DataFrame({"block": ["conv", "gsa"], "size": [8, 8], "fwd_bwd_ms": [2.0, 5.0],
                          "activation_mb": [1.0, 2.0]})
    assert bench.bench_ratios(table).loc[8, "gsa/conv"] == pytest.approx(2.5)


def test_bench_ratios_prefer_the_per_round_paired_ratios():
    table = pd.DataFrame({"block": ["conv", "gsa", "gsa_pytorch"], "size": [8, 8, 8], "fwd_bwd_ms": [2.0, 5.0, 9.0],
                          "activation_mb": [1.0, 2.0, 3.0], "over_conv": [1.0, 2.2, 4.0], "over_gsa": [0.4, 1.0, 1.9]})
    ratios = bench.bench_ratios(table)
    assert ratios.loc[8, "gsa/conv"] == pytest.approx(2.2)
    assert ratios.loc[8, "gsa_pytorch/gsa"] == pytest.approx(1.9)
    assert ratios.loc[8, "gsa_pytorch/gsa activation memory"] == pytest.approx(1.5)


def test_trainer_overhead_benchmark_runs():
    result = bench_train.trainer_overhead("proxy_resnet", rounds=1, device="cpu")
    assert result["train_epoch_s"] > 0 and result["bare_epoch_s"] > 0


@pytest.mark.parametrize("flag,expected", [([], "auto"), (["--no-channels-last"], False)])
def test_train_benchmark_trains_in_the_layout_asked_for(monkeypatch, flag, expected):
    """``bench train --no-channels-last`` reaches the recipes of both measurements."""
    layouts = []
    monkeypatch.setattr(bench_train, "train", lambda cfg, recipe, data, **kw: layouts.append(recipe.channels_last) or {
        "train_time_s": 1.0, "accuracy": 0.99, "images_per_s": 1.0, "history": [{"train_time_s": 1.0, "accuracy": 0.99}]})
    monkeypatch.setattr(bench_train, "bare_epoch", lambda name, data, recipe: layouts.append(recipe.channels_last) or 1.0)
    assert main(["bench", "train", "--rounds", "1", *flag]) == 0
    assert layouts and set(layouts) == {expected}


def test_training_throughput_compares_models_side_by_side(monkeypatch):
    seen = []
    real = bench_train.bare_epoch

    def spy(name, data, recipe):
        seen.append((name, data.image_size, recipe.batch_size))
        return real(name, data, recipe)

    monkeypatch.setattr(bench_train, "bare_epoch", spy)
    rows = bench_train.training_throughput(["proxy_resnet", "proxy_gsa_resnet"], [8], rounds=2, batch_size=64,
                                           device="cpu")
    assert [(r["size"], r["model"]) for r in rows] == [(8, "proxy_resnet"), (8, "proxy_gsa_resnet")]
    # a warm-up epoch per model, then the rounds with the order rotated so neither model always runs first
    assert [n for n, _, _ in seen] == ["proxy_resnet", "proxy_gsa_resnet"] * 2 + ["proxy_gsa_resnet", "proxy_resnet"]
    assert {(size, batch) for _, size, batch in seen} == {(8, 64)}
    assert rows[0]["time_vs_first"] == 1.0
    for row in rows:
        assert row["images_per_s"] == pytest.approx((1437 // 64) * 64 / row["epoch_s"])


def test_channels_last_throughput_trains_in_that_format(monkeypatch):
    """``channels_last`` reaches the recipe, the model's weights and every batch."""
    formats = []
    real_build = bench_train.build_model

    def build(cfg):
        model = real_build(cfg)
        stage = model.stages[0]  # 16 channels in: the two formats differ (1-channel images do not)
        stage.register_forward_pre_hook(
            lambda module, args: formats.append(
                (args[0].is_contiguous(memory_format=torch.channels_last),
                 module[0].mixer.conv.weight.is_contiguous(memory_format=torch.channels_last))))
        return model

    monkeypatch.setattr(bench_train, "build_model", build)
    for channels_last, expected in ((True, True), (False, False), ("auto", True)):  # auto: channels last on CPU
        formats.clear()
        bench_train.training_throughput(["proxy_resnet"], [8], rounds=1, batch_size=512, device="cpu",
                                        channels_last=channels_last)
        assert formats and set(formats) == {(expected, expected)}


def test_throughput_command_prints_one_row_per_model_and_size(capsys):
    assert main(["bench", "throughput", "--sizes", "8", "--rounds", "1", "--models", "proxy_resnet", "proxy_gsa_resnet",
                 "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert [(r["size"], r["model"]) for r in document["rows"]] == [(8, "proxy_resnet"), (8, "proxy_gsa_resnet")]
    assert main(["bench", "throughput", "--models", "proxy_resnt"]) == 2
    assert "did you mean 'proxy_resnet'" in capsys.readouterr().err


def test_search_overhead_benchmark_splits_the_wall_time(tmp_path):
    result = bench_cmds.search_overhead(trials=2, recipe={"epochs": 1, "device": "cpu"}, reports_dir=tmp_path)
    assert result["trials"] == 2 and result["train_s_per_trial"] > 0
    assert 0 <= result["overhead_s_per_trial"] < result["wall_s"]
    assert result["trials_per_hour"] == pytest.approx(2 / result["wall_s"] * 3600)


def test_list_models_prints_the_zoo(capsys):
    assert main(["list", "models", "proxy_*"]) == 0
    out = capsys.readouterr().out
    assert "proxy_gsa_resnet" in out and "params" in out and "resnet50" not in out
    assert main(["list", "models", "proxy_*", "--json"]) == 0
    assert "proxy_resnet" in json.loads(capsys.readouterr().out)["models"]


def test_count_flops_is_what_the_trainer_reports():
    from gsa_search.models import create_model
    from gsa_search.trainer import Recipe, train
    from gsa_search.data import load_dataset

    data = load_dataset("synthetic", num_samples=32, num_classes=3, image_size=8, in_channels=1)
    result = train(create_model("proxy_resnet").cfg, Recipe(epochs=1, batch_size=16, device="cpu"), data)
    model = create_model("proxy_resnet", num_classes=3, in_channels=1, image_size=8)
    assert result["flops"] == count_flops(model, (1, 1, 8, 8)).per_image
