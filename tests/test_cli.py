from neuromorph.cli import main


def test_list_names_every_recipe_with_its_paper(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "store-recall" in out and "smnist" in out and "Bellec" in out
