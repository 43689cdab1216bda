"""The Python API: the README's notebook example runs as written, and the API refuses what it cannot run."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image
from torch.utils.data import Dataset

import morf_search as ms
from morf_search.cli import main
from morf_search.core.errors import UserError
from morf_search.training.data import NO_CUSTOM_DATA

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- tests/test_api.py runs this block -->"

# Run after the README's block, in the same script: what a user would check next.
EPILOGUE = '''
from morf_search.core.errors import UserError

print("DEPLOYED", len(ms.morf_layers(model)), tuple(model(torch.rand(4, 3, 16, 16)).shape))
print("AGAIN", ms.Search.restore("runs/stripes", data=data).fit().status)
for wrong in ({}, {"data": ms.CustomData(Stripes(8, seed=0), Stripes(8, seed=1), Stripes.classes)}):
    try:
        ms.Search.restore("runs/stripes", **wrong).fit()
    except UserError as err:
        print("REFUSED", err)
'''


def readme_example() -> str:
    text = README.read_text()
    assert MARKER in text, "the README lost its tested Python API example"
    return text.split(MARKER, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """The README's example run as a script (its classes live in __main__, as in a notebook)."""
    folder = tmp_path_factory.mktemp("notebook")
    (folder / "example.py").write_text(readme_example() + EPILOGUE)
    env = {**os.environ, "MORF_SEARCH_CACHE": str(folder / "cache"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "example.py"], cwd=folder, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return folder, result.stdout.splitlines()


def test_the_readme_example_searches_your_data_with_your_family_and_returns_its_results(example):
    folder, lines = example
    assert lines[0].startswith("SearchResults('runs/stripes', status='done', trials=4, front=")
    assert lines[0].endswith("finalists=1)")
    assert "DEPLOYED 0 (4, 2)" in lines  # the loaded finalist is the deploy form: no MoRF layer left, 2 classes
    assert "AGAIN done" in lines  # restoring a finished run with its data redoes nothing

    results = ms.load_run(folder / "runs" / "stripes")
    assert results.status == "done"
    assert len(results.trials) == 4 and set(results.trials["status"]) <= {"ok", "infeasible"}
    assert set(results.front["arch"]) <= set(results.trials["arch"])
    assert results.finalists["arch"].iloc[0] in set(results.front["arch"])
    assert [path.name for path in results.exports] == [results.finalists["arch"].iloc[0]]
    assert (results.exports[0] / "model.safetensors").is_file() and (results.exports[0] / "class_map.txt").is_file()
    assert (results.exports[0] / "class_map.txt").read_text().split() == ["horizontal", "vertical"]
    assert {"accuracy_latency.png", "accuracy_latency.html", "search_progress.png"} <= set(results.plots)
    assert results.report is not None and "Accuracy against latency" in results.report.read_text()
    assert results.manifest["custom_data"] == {"classes": ["horizontal", "vertical"], "train": 64, "val": 32}
    space = yaml.safe_load((folder / "runs" / "stripes" / "space.yaml").read_text())
    assert space["data"]["dataset"] == "custom" and space["model"]["family"] == "resnet_mini"


def test_restoring_a_custom_data_run_without_its_data_or_with_other_data_is_refused(example):
    _, lines = example
    refused = [line for line in lines if line.startswith("REFUSED")]
    assert len(refused) == 2
    assert "trains on datasets given from Python; continue it with morf_search.Search.restore(path, data=" \
        in refused[0]
    assert "data= differs from the datasets it started on" in refused[1] and "64 train and 32 val" in refused[1]


class Blank(Dataset):
    classes = ["a", "b"]

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return Image.new("RGB", (8, 8)), index % 2


SMALL = {"model": {"family": "resnet", "size": "cifar"}, "data": {"image_size": 24}}


def test_a_space_without_a_name_needs_one_and_data_needs_a_custom_dataset(tmp_path):
    with pytest.raises(UserError, match="name= is needed"):
        ms.Search(SMALL, runs=tmp_path)
    data = ms.CustomData(Blank(), Blank(), Blank.classes)
    search = ms.Search({**SMALL, "data": {"dataset": "embedded", "image_size": 24}}, name="x", runs=tmp_path,
                       data=data)
    with pytest.raises(UserError, match="data= was given, so data.dataset must be 'custom'"):
        search.fit()
    assert not (tmp_path / "x").exists()
    with pytest.raises(UserError, match="not a morf-search run"):
        ms.load_run(tmp_path)


def test_the_command_line_refuses_a_custom_dataset_in_one_line(tmp_path, capsys):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({**SMALL, "data": {"dataset": "custom", "image_size": 24}}))
    for argv in (["validate", str(path)], ["run", str(path), "--runs", str(tmp_path / "runs")]):
        assert main(argv) == 2
        assert capsys.readouterr().err.strip().endswith(NO_CUSTOM_DATA)
    assert not (tmp_path / "runs" / "space").exists()
