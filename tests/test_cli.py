from neuromorph.cli import main


def test_list_names_every_recipe_with_its_paper(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "store-recall" in out and "smnist" in out and "Bellec" in out


def test_restore_is_a_subcommand_and_names_a_missing_checkpoint(tmp_path, capsys):
    from PIL import Image

    img = tmp_path / "in.png"
    Image.new("RGB", (5, 4), (10, 20, 30)).save(img)
    missing = tmp_path / "no-run"
    assert main(["restore", str(img), "-o", str(tmp_path / "out"), "--checkpoint", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
