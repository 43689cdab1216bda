"""What validate accepts runs; files that are not what they should be get one line and exit status 2."""
import json
import subprocess
import sys
import tracemalloc

import pytest
import torch
import yaml
from test_data import write_image_folder

from morf_search.cli import main
from morf_search.core.errors import UserError
from morf_search.rundir import RunDir
from morf_search.space.schema import MAX_YAML_NODES, dump_space, load_space, parse_space
from morf_search.training.embedded import EMBEDDED_CLASSES

QUICKSTART = (__import__("pathlib").Path(__file__).parents[1] / "search_spaces" / "quickstart.yaml").read_text()


def laughs(indent=""):
    """The billion-laughs bomb: 9 levels of 9 aliases each, 9**9 strings once expanded."""
    lines = [f'{indent}a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"{indent}a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    return "\n".join(lines) + "\n"


HOSTILE = {
    "binary": bytes(range(256)) * 40,
    "latin-1": ("# café au lait\n" + QUICKSTART).encode("latin-1"),
    "50 MB": (QUICKSTART + "# " + "x" * (50 * 1024 ** 2) + "\n").encode(),
    "100k-deep list": ("[" * 100_000 + "]" * 100_000 + "\n").encode(),
    "100k-deep mapping": ("a: {" * 100_000 + "}" * 100_000 + "\n").encode(),
    "billion laughs": laughs().encode(),
    "bomb in model.args": QUICKSTART.replace("  args: {patch_size: 2}", "  args:\n" + laughs("    ")).encode(),
    "cyclic alias": b"model: {args: &x {a: *x}}\n",
    "5000-digit integer": ("seed: " + "9" * 5000 + "\n").encode(),
}
EXPECTED = {
    "binary": "a binary file, not text",
    "latin-1": "not UTF-8 text (byte 0xe9 on line 1); save it as UTF-8",
    "50 MB": "larger than the 1 MB limit for a space file",
    "100k-deep list": "not valid YAML",
    "100k-deep mapping": "nested deeper than 32 levels",
    "billion laughs": f"more than {MAX_YAML_NODES:,} values once alias",
    "bomb in model.args": f"more than {MAX_YAML_NODES:,} values once alias",
    "cyclic alias": "a cycle",
    "5000-digit integer": "a value Python cannot hold",
}


def error_lines(text):
    return [line for line in text.strip().splitlines() if line.startswith("error: ")]


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_space_files_give_one_line_in_bounded_memory(tmp_path, capsys, kind):
    path = tmp_path / "space.yaml"
    path.write_bytes(HOSTILE[kind])
    tracemalloc.start()
    try:
        assert main(["validate", str(path)]) == 2
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}") and EXPECTED[kind] in err[0], err
    assert peak < 8 * 1024 ** 2, f"{kind}: {peak / 1024 ** 2:.1f} MB"  # a 50 MB file is never read whole


@pytest.mark.parametrize("kind", ["bomb in model.args"])  # the in-process test above covers every kind
def test_console_script_refuses_hostile_files_with_exit_2(tmp_path, kind):
    path = tmp_path / "space.yaml"
    path.write_bytes(HOSTILE[kind])
    result = subprocess.run([sys.executable, "-m", "morf_search.cli", "validate", str(path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(error_lines(result.stderr)) == 1 and EXPECTED[kind] in result.stderr


def test_anchors_that_share_a_stage_stay_allowed(tmp_path):
    stage1 = "    - {kernels: [3, 5, 7], max_experts: 2"
    text = QUICKSTART.replace(stage1, stage1.replace("- {", "- &s {"))
    text = text.replace("    - {kernels: [3, 5], max_experts: 2, routing: [static, soft]}", "    - *s")
    (tmp_path / "space.yaml").write_text(text)
    space = load_space(tmp_path / "space.yaml")
    assert space.stage_spaces[1] == space.stage_spaces[2]


def quickstart(**changes):
    """The quickstart space with some fields changed: {"model.args": {...}, "device": "cpu"}."""
    data = yaml.safe_load(QUICKSTART)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        section = data
        for part in parents:
            section = section.setdefault(part, {})
        section[last] = value
    return data


CUDA_HERE = torch.cuda.is_available()
NOT_RUNNABLE = [
    ({"device": "tpu"}, "device: unknown device 'tpu'; expected auto, cpu, cuda or cuda:N"),
    ({"device": "meta"}, "device: unknown device 'meta'"),
    ({"latency.device": "cuda:99"}, "latency.device: 'cuda:99' requested but"),
    ({"model.args": {"patch_sizee": 2}}, "model.args.patch_sizee: timm cannot build morf_convnext_cifar with these "
                                         "arguments: ConvNeXt.__init__() got an unexpected keyword argument"),
    ({"model.args": {"patch_size": "two"}}, "model.args: timm cannot build morf_convnext_cifar"),
    ({"model.args": {"drop_path_rate": "lots"}}, "model.args: timm cannot build"),
    ({"model.args": {"in_chans": 1}}, "model.args: a batch of 3-channel 32 px images does not pass through"),
    ({"space.stages": [{"kernels": [3, 100001]}]}, "space.stages[0].kernels: expert 100001 spans 100,001 px, above "
                                                   "the limit of 101"),
    ({"space.stages": [{"kernels": [3, "3d1000"]}]}, "expert 3d1000 spans 2,001 px, above the limit of 101"),
    ({"data.image_size": 100000}, "data.image_size: 100,000 is above the limit of 4,096 px"),
    ({"model.dims": [24, 48, 96, 10 ** 7]}, "model.dims: 10,000,000 is above the limit of 16,384 channels"),
    ({"model.depths": [1, 1, 1000, 1]}, "model.depths: 1,000 is above the limit of 128 blocks per stage"),
    ({"model.dims": [16384] * 4, "model.depths": [3, 3, 27, 3]},
     "model: the supernet would have 84,056,301,656 parameters, above the limit of 2,000,000,000"),
    ({"model.num_classes": 10 ** 8}, "model.num_classes: 100,000,000 is above the limit of 100,000 classes"),
    ({"model.num_classes": 3}, "model.num_classes: 3 contradicts the 10 classes of embedded"),
    ({"model.size": "tiny", "model.depths": None, "model.dims": None, "model.args": {}, "data.image_size": 24},
     "data.image_size: 24 px images are too small for morf_convnext_tiny"),
    ({"data.embedded": {"num_train": 10 ** 7}, "data.image_size": 64},
     "data.embedded: 10,002,000 images of 64 px need 114.5 GiB in memory, above the limit of 4 GiB"),
    ({"space.stages": [{"kernels": [3, 5], "min_experts": 2, "routing": ["hard"], "top_k": [3]}]},
     "space: a stage has no valid choice"),
]
if not CUDA_HERE:
    NOT_RUNNABLE.append(({"device": "cuda"}, "device: 'cuda' requested but CUDA is not available here"))


@pytest.mark.parametrize("changes,expected", NOT_RUNNABLE, ids=[e[:40] for _, e in NOT_RUNNABLE])
def test_values_that_would_fail_in_run_are_refused_by_validate(tmp_path, capsys, changes, expected):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(quickstart(**changes)))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: ") and expected in err[0], err


def test_run_refuses_them_before_the_run_directory_exists(tmp_path, capsys):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(quickstart(**{"model.args": {"patch_sizee": 2}})))
    assert main(["run", str(path), "--runs", str(tmp_path / "runs")]) == 2
    assert "model.args.patch_sizee" in capsys.readouterr().err and not (tmp_path / "runs").exists()


def test_auto_devices_and_sane_sizes_stay_valid():
    space = parse_space(quickstart(**{"device": "auto", "latency.device": "auto", "model.num_classes": 10,
                                      "space.stages": [{"kernels": [3, "25d2"]}]}))
    assert space.device == "auto" and space.stage_spaces[0].kernels == ["3", "25d2"]  # span 49: SLaK's size


def test_the_schema_knows_the_embedded_class_count():
    assert parse_space({}).data.known_classes() == len(EMBEDDED_CLASSES) == 10


def test_image_folder_class_count_comes_from_its_folders(tmp_path):
    for split in ("train", "val"):
        for name in ("cat", "dog", "owl"):
            (tmp_path / split / name).mkdir(parents=True)
    data = {"data": {"dataset": f"imagefolder:{tmp_path}", "image_size": 32}}
    assert parse_space({**data, "model": {"num_classes": 3}}).model.num_classes == 3
    with pytest.raises(UserError, match="model.num_classes: 5 contradicts the 3 classes of imagefolder:"):
        parse_space({**data, "model": {"num_classes": 5}})
    (tmp_path / "val").rename(tmp_path / "test")
    with pytest.raises(UserError, match="needs train/ and val/ subfolders"):
        parse_space(data)


def test_a_timm_dataset_contradicting_num_classes_stops_run_before_the_run_directory(tmp_path, capsys):
    write_image_folder(tmp_path / "data")  # 3 classes, known only once timm opens it
    path = tmp_path / "space.yaml"
    data = quickstart(**{"model.num_classes": 5, "data.dataset": f"torch/image_folder:{tmp_path / 'data'}"})
    path.write_text(yaml.safe_dump(data))
    assert main(["validate", str(path)]) == 0
    capsys.readouterr()
    assert main(["run", str(path), "--runs", str(tmp_path / "runs")]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {path}: model.num_classes: 5 contradicts the 3 classes of "
                                               f"torch/image_folder:{tmp_path / 'data'}; leave it out to use the "
                                               "dataset's")
    assert not (tmp_path / "runs").exists()


# -- files a run keeps ------------------------------------------------------------------------


@pytest.fixture
def run(tmp_path):
    return RunDir.create(tmp_path / "run", dump_space(parse_space({})), 0, "test")


GARBLED_MANIFESTS = [
    ("é".encode("latin-1") * 3, "not UTF-8 text (byte 0xe9 on line 1)"),
    (b"[1, 2, 3]\n", "input should be a valid dictionary"),
    (b'{"phases": [], "files": {}}\n', "phases: input should be a valid dictionary"),
    (b'{"files": {}}\n', "phases: field required"),
    (b'{"phases": {}, "fi', "not valid JSON"),
]


@pytest.mark.parametrize("content,expected", GARBLED_MANIFESTS)
def test_garbled_manifest_gives_one_line_naming_it(run, capsys, content, expected):
    run.manifest_file.write_bytes(content)
    assert main(["report", str(run.path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {run.manifest_file}: ") and expected in err[0], err


def test_garbled_run_snapshot_gives_one_line_naming_it(run, capsys):
    run.space_file.write_bytes(b"\xff\xfe" + "seed: 0\n".encode("utf-16-le"))
    assert main(["report", str(run.path)]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {run.space_file}: not UTF-8 text (byte 0xff on line 1); "
                                               "save it as UTF-8")


FINALISTS_HEADER = "arch,accuracy_oneshot,accuracy_finetuned,latency_ms,train_latency_ms\n"
ARCH = "k3-static_k3-static_k3-static_k3-static"


@pytest.mark.parametrize("content,expected", [
    ((FINALISTS_HEADER + f"{ARCH},80,81,1.0,1.2\n").encode("utf-16"), "not UTF-8 text (byte 0xff on line 1)"),
    (b"arch,latency_ms\nk3,1.0\n", "no column 'accuracy_oneshot', 'accuracy_finetuned', 'train_latency_ms'"),
    ((FINALISTS_HEADER + f"{ARCH},eighty,81,1.0,1.2\n").encode(), "a column holds values of the wrong type"),
    (b'arch,"accuracy\n', "not a readable CSV table"),
])
def test_garbled_finalists_csv_gives_one_line_naming_it(run, capsys, content, expected):
    run.finalists_csv.write_bytes(content)
    assert main(["report", str(run.path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {run.finalists_csv}: ") and expected in err[0], err


@pytest.mark.parametrize("content,expected", [
    (b"\x80\x81", "not UTF-8 text (byte 0x80 on line 1)"),
    (b'{"stage": 0}', "input should be a valid list"),
    (b'[{"stage": 0, "routing": "soft"}]', "0.top_k: field required"),
])
def test_garbled_routing_json_gives_one_line_naming_it(run, capsys, content, expected):
    run.finalists_csv.write_text(FINALISTS_HEADER + f"{ARCH},80,81,1.0,1.2\n")
    stats = run.finalist_dir(ARCH) / "routing.json"
    stats.parent.mkdir(parents=True)
    stats.write_bytes(content)
    assert main(["report", str(run.path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {stats}: ") and expected in err[0], err


@pytest.mark.parametrize("content,expected", [
    ("{}".encode("utf-16"), "not UTF-8 text"),
    (b'["morf_convnext_cifar"]', "input should be a valid dictionary"),
    (json.dumps({"architecture": "morf_convnext_cifar"}).encode(), "num_classes: field required"),
    (json.dumps({"architecture": 7, "num_classes": 10}).encode(), "architecture: input should be a valid string"),
])
def test_garbled_export_config_gives_one_line_naming_it(tmp_path, capsys, content, expected):
    export = tmp_path / "export"
    export.mkdir()
    (export / "config.json").write_bytes(content)
    assert main(["bench", str(export)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {export / 'config.json'}: ") and expected in err[0], err
