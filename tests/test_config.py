"""Space files: defaults, resolution, and one clear line per mistake (exit code 2, no traceback)."""
import subprocess
import sys

import pytest
import yaml

from morf_search.cli import main
from morf_search.space.schema import load_space, parse_space
from morf_search.space.search_space import SearchSpace, stage_choices


def write(tmp_path, text, name="space.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_empty_file_is_a_valid_space_with_defaults(tmp_path):
    space = load_space(write(tmp_path, ""))
    assert space.model.timm_name == "morf_convnext_cifar" and space.data.dataset == "embedded"
    assert len(space.stage_spaces) == 4 and space.search.objectives == ["accuracy", "latency_ms"]


def test_one_entry_applies_to_all_stages_and_per_stage_lists_work(tmp_path):
    one = load_space(write(tmp_path, "space: {kernels: [3, 5, '3d2'], max_experts: 2}\n"))
    assert [s.kernels for s in one.stage_spaces] == [["3", "5", "3d2"]] * 4
    per_stage = parse_space({"space": {"stages": [{"kernels": [3, 5, 7]}, {"kernels": [3]}, {"kernels": [3]},
                                                  {"kernels": [1, 3], "routing": ["static"]}]}})
    assert SearchSpace(per_stage).stages[1] == stage_choices(per_stage.stage_spaces[1])


def test_space_size_counts_subsets_routings_and_top_k():
    space = SearchSpace(parse_space({"space": {"kernels": [3, 5, 7], "min_experts": 1, "max_experts": 3,
                                               "routing": ["static", "soft", "hard"], "top_k": [1, 2]}}))
    # singletons: 3 (static only); pairs: 3 x (static, soft, hard1, hard2); triple: 1 x 4
    per_stage = 3 + 3 * 4 + 4
    assert len(space.stages[0]) == per_stage and len(space) == per_stage ** 4
    assert len(set(space)) == len(space)
    assert all(arch in space for arch in space)


def test_model_section_resolves_to_timm_arguments():
    space = parse_space({"model": {"family": "resnet", "size": "18", "depths": [1, 1, 1, 1],
                                   "dims": [16, 32, 64, 128], "args": {"drop_rate": 0.1}}})
    assert space.model.timm_name == "morf_resnet18"
    assert space.model.timm_kwargs() == {"drop_rate": 0.1, "layers": (1, 1, 1, 1), "channels": (16, 32, 64, 128)}


BAD_FILES = [
    ("model: {sizes: tiny}\n", "model.sizes: unknown key; expected one of family, size"),
    ("data: {batch_size: many}\n", "data.batch_size: Input should be a valid integer"),
    ("space: {kernels: [3, 4]}\n", "space.kernels: kernel size 4 is not a positive odd integer"),
    ("space: {kernels: [3, -5]}\n", "space.kernels: kernel size -5 is not a positive odd integer"),
    ("space: {stages: [{kernels: [3]}, {kernels: [6]}, {kernels: [3]}, {kernels: [3]}]}\n",
     "space.stages[1].kernels: kernel size 6"),
    ("space: {kernels: [3, 5, 7], min_experts: 3, max_experts: 2}\n",
     "space.min_experts: 3 is larger than max_experts (2)"),
    ("space: {routing: []}\n", "space.routing: expected at least one routing mode"),
    ("space: {routing: [sparse]}\n", "space.routing[0]: Input should be 'static', 'soft' or 'hard'"),
    ("data: {dataset: cifar10:/no/such/dir}\n", "data.dataset: path '/no/such/dir' does not exist"),
    ("data: {dataset: mnist}\n", "data.dataset: unknown dataset 'mnist'; expected embedded, cifar10:PATH"),
    ("data: {image_size: 12}\n", "data.image_size: the embedded dataset needs at least 24 px, got 12"),
    ("model: {family: convnext, size: huge}\n", "model.size: unknown convnext size 'huge'; expected one of atto"),
    ("model: {family: resnet, size: tiny}\n", "model.size: unknown resnet size 'tiny'; expected one of 18, 26, 50"),
    ("supernet: {epochs: 4, widest_first_epochs: 4}\n", "supernet.widest_first_epochs: 4 leaves none of the 4"),
    ("latency: {backend: onnxruntime, dtype: float16}\n", "latency.dtype: the onnxruntime backend times float32"),
    ("model: {family: mobilenet}\n", "model.family: unknown model family 'mobilenet'; expected one of convnext, resnet"),
    ("model: {depths: [1, 1, 1]}\n", "model.depths: expected 4 positive integers, one per stage"),
    ("search: {engine: ray, algorithm: evolution}\n", "search.algorithm: unknown ray algorithm 'evolution'"),
    ("supernet: {optimizer: adamz}\n", "supernet.optimizer: unknown optimizer 'adamz'"),
    ("search: {objectives: [accuracy, speed]}\n", "search.objectives[1]: Input should be"),
    ("space: {stages: [{kernels: [3]}, {kernels: [3]}]}\n", "space.stages: expected 1 entry (for all stages) or 4"),
    ("- just\n- a list\n", "expected a mapping of sections"),
    ("model: {family: [convnext\n", "not valid YAML"),
]


@pytest.mark.parametrize("text,expected", BAD_FILES)
def test_invalid_files_give_one_line_naming_the_field(tmp_path, capsys, text, expected):
    path = write(tmp_path, text)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"error: {path}") and expected in err[0], err[0]


def test_missing_space_file(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nope.yaml'}: no such file"


def test_validate_prints_resolved_config_size_and_choices(tmp_path, capsys):
    path = write(tmp_path, "space: {kernels: [3, 5], max_experts: 2, routing: [static, soft]}\n")
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    resolved = yaml.safe_load(out)
    assert resolved["supernet"]["epochs"] == 10 and resolved["space"]["stages"][0]["kernels"] == ["3", "5"]
    assert "# architectures in the space: 256" in out  # (k3, k5, k3.5-static, k3.5-soft) ** 4
    assert "stage 0: 4 choices: k3-static k5-static k3.5-static k3.5-soft" in out


def test_console_script_reports_errors_without_traceback(tmp_path):
    path = write(tmp_path, "space: {kernels: [2]}\n")
    result = subprocess.run([sys.executable, "-m", "morf_search", "validate", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "space.kernels: kernel size 2" in result.stderr


@pytest.mark.parametrize("name", ["quickstart", "convnext_cifar", "resnet_cifar", "convnext_imagenet"])
def test_shipped_spaces_are_valid(name, tmp_path):
    from pathlib import Path

    path = Path(__file__).parents[1] / "search_spaces" / f"{name}.yaml"
    data = yaml.safe_load(path.read_text())
    if data["data"]["dataset"] != "embedded":  # templates point at the user's data; any existing tree will do
        kind = data["data"]["dataset"].partition(":")[0]
        for split in ("train", "val"):
            (tmp_path / split / "cat").mkdir(parents=True)
        data["data"]["dataset"] = f"{kind}:{tmp_path}"
    space = SearchSpace(parse_space(data, str(path)))
    assert len(space) > 100 and "#" in path.read_text(), "shipped spaces are commented and searchable"
