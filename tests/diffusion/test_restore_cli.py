"""``neuromorph restore``: argument parsing via add_parser, any image layout and size, atomic outputs,
clear errors for missing / incompatible checkpoints (a tiny weather run trained here)."""

import argparse
import json

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from neuromorph.cli import main
from neuromorph.data.images import read_image, write_image
from neuromorph.diffusion.restore_cli import add_parser, run

TINY = [
    "--set", "model.patch=16", "--set", "model.channels=8", "--set", "model.channel_mult=1,2",
    "--set", "model.layers_per_block=1", "--set", "model.attention_resolutions=[]",
    "--set", "model.norm_groups=4", "--set", "iterations=2", "--set", "batch_images=2",
    "--set", "patch_n=1", "--set", "data.kinds=rain", "--set", "data.train_crop=32",
    "--set", "data.crops_per_image=1", "--set", "data.short_side=64", "--set", "data.test_crop=16",
    "--set", "data.test_limit=1", "--set", "steps=2", "--set", "stride=8", "--set", "strides=16,8",
    "--set", "dpm_steps=0", "--set", "panels=1",
]  # fmt: skip


@pytest.fixture(scope="module")
def weather_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("restore") / "run"
    assert main(["run", "weather", "--quick", "--no-progress", *TINY, "--out", str(out)]) == 0
    return out


def _parse(argv):
    parser = argparse.ArgumentParser(prog="neuromorph")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def _restore(argv):
    return run(_parse(["restore", *argv, "--no-progress"]))


def test_parser_defines_the_documented_options():
    args = _parse(["restore", "a.png", "b.jpg", "-o", "out", "--checkpoint", "RUN", "--steps", "10",
                   "--stride", "8", "--sampler", "dpm"])  # fmt: skip
    assert args.images == ["a.png", "b.jpg"] and args.output == "out" and args.checkpoint == "RUN"
    assert (args.steps, args.stride, args.sampler) == (10, 8, "dpm")
    with pytest.raises(SystemExit):
        _parse(["restore", "a.png", "-o", "out", "--checkpoint", "RUN", "--sampler", "euler"])


@pytest.mark.parametrize(
    "name, shape, depth",
    [
        ("one.png", (1, 1, 1), 8),  # 1 x 1 grey
        ("grey16.png", (20, 9, 1), 16),
        ("rgb.jpg", (17, 23, 3), 8),
        ("rgba16.png", (16, 16, 4), 16),
        ("grey_alpha.png", (12, 10, 2), 8),
        ("wide.png", (3, 40, 3), 8),
    ],
)
def test_restores_any_layout_and_size_in_kind(tmp_path, weather_run, capsys, name, shape, depth):
    rng = np.random.default_rng(0)
    src = tmp_path / "in" / name
    src.parent.mkdir()
    pixels = rng.random(shape).astype(np.float32)
    write_image(src, pixels, bit_depth=depth)
    out = tmp_path / "out"
    assert _restore([str(src), "-o", str(out), "--checkpoint", str(weather_run), "--steps", "2"]) == 0
    restored, info = read_image(out / name)
    _, info_in = read_image(src)
    assert info == info_in  # same format, bit depth, channels and size
    assert np.isfinite(restored).all()
    if shape[2] in (2, 4):  # alpha is passed through untouched
        alpha_in = read_image(src)[0][..., -1]
        assert np.array_equal(restored[..., -1], alpha_in)
    assert str(out / name) in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [name]  # no temporary files left


def test_same_seed_same_output_and_existing_files_are_kept(tmp_path, weather_run):
    src = tmp_path / "x.png"
    write_image(src, np.random.default_rng(1).random((20, 20, 3)).astype(np.float32))
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["--checkpoint", str(weather_run), "--stride", "4", "--sampler", "dpm", "--steps", "3"]
    assert _restore([str(src), "-o", str(a), *common]) == 0
    assert _restore([str(src), "-o", str(b), *common]) == 0
    assert (a / "x.png").read_bytes() == (b / "x.png").read_bytes()
    before = (a / "x.png").read_bytes()
    with pytest.raises(ValueError, match="exist.*--overwrite"):
        _restore([str(src), "-o", str(a), *common, "--seed", "2"])
    assert (a / "x.png").read_bytes() == before
    assert _restore([str(src), "-o", str(a), *common, "--seed", "2", "--overwrite"]) == 0
    assert (a / "x.png").read_bytes() != before


def test_unreadable_images_are_skipped_and_reported(tmp_path, weather_run, capsys):
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    write_image(good, np.zeros((8, 8, 3), np.float32))
    bad.write_text("not an image")
    out = tmp_path / "out"
    assert _restore([str(bad), str(good), "-o", str(out), "--checkpoint", str(weather_run)]) == 1
    assert "bad.png" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["good.png"]


def test_missing_or_incompatible_checkpoints_are_named(tmp_path, weather_run):
    src = tmp_path / "x.png"
    write_image(src, np.zeros((8, 8, 3), np.float32))
    out = str(tmp_path / "out")
    with pytest.raises(ValueError, match="nope.*does not exist"):
        _restore([str(src), "-o", out, "--checkpoint", str(tmp_path / "nope")])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty.*no config.yaml"):
        _restore([str(src), "-o", out, "--checkpoint", str(empty)])
    # a copy of the run whose weights belong to another network
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.yaml").write_text((weather_run / "config.yaml").read_text())
    tensors = load_file(str(weather_run / "model_ema.safetensors"))
    key = next(k for k in tensors if k.endswith("conv_in.weight"))
    tensors[key] = tensors[key][:, :3].contiguous()
    save_file(tensors, str(other / "model_ema.safetensors"))
    with pytest.raises(ValueError, match="other.*does not fit"):
        _restore([str(src), "-o", out, "--checkpoint", str(other)])
    (other / "model_ema.safetensors").unlink()
    with pytest.raises(ValueError, match="other.*no model_ema.safetensors"):
        _restore([str(src), "-o", out, "--checkpoint", str(other)])
    (other / "config.yaml").write_text(json.dumps({"recipe": "store-recall", "config": {}}))
    with pytest.raises(ValueError, match="not a weather run"):
        _restore([str(src), "-o", out, "--checkpoint", str(other)])
    assert not (tmp_path / "out").exists()  # nothing written on a bad checkpoint


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--stride", "17"], "--stride"),
        (["--steps", "0"], "--steps"),
        (["--device", "tpu"], "--device"),
    ],
)
def test_bad_arguments_are_named(tmp_path, weather_run, extra, needle):
    src = tmp_path / "x.png"
    write_image(src, np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=needle):
        _restore([str(src), "-o", str(tmp_path / "o"), "--checkpoint", str(weather_run), *extra])
    with pytest.raises(ValueError, match="no such image"):
        _restore([str(tmp_path / "missing.png"), "-o", str(tmp_path / "o"), "--checkpoint", str(weather_run)])
    with pytest.raises(ValueError, match="replaced"):
        _restore([str(src), "-o", str(tmp_path), "--checkpoint", str(weather_run)])
