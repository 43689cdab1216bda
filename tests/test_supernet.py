"""Weight-sharing supernet, resumable training and one-shot evaluation on a tiny CIFAR fixture."""
import random

import pytest
import timm
import torch
from test_data import write_cifar10
from timm.utils import reparameterize_model

from morf_search import MoRFConv2d
from morf_search.context import RunContext
from morf_search.core.fileio import load_weights
from morf_search.latency.cost import count_flops, count_params
from morf_search.rundir import RunDir
from morf_search.space.schema import dump_space, parse_space
from morf_search.space.search_space import SearchSpace
from morf_search.training.data import load_splits, make_loader
from morf_search.training.evaluate import preserved_batchnorm, recalibrate_batchnorm
from morf_search.training.loop import Checkpoint, build_optimizer, fit
from morf_search.training.supernet import SuperNet

TINY_CONVNEXT = {"family": "convnext", "size": "cifar", "depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64]}
TINY_RESNET = {"family": "resnet", "size": "cifar", "depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64]}


def tiny_space(tmp_path, model=TINY_CONVNEXT, **sections):
    root = tmp_path / "cifar"
    if not root.exists():
        write_cifar10(root, per_batch=12, test=16)
    return parse_space({
        "model": model, "data": {"dataset": f"cifar10:{root}", "image_size": 16, "batch_size": 8},
        "space": {"stages": [{"kernels": [3, 5, "3d2"]}, {"kernels": [3, 5]}, {"kernels": [3]}, {"kernels": [1, 3]}]},
        "supernet": {"epochs": 2, "warmup_epochs": 0, "balance_loss_weight": 0.1}, **sections})


def test_supernet_holds_every_candidate_and_activates_subnets(tmp_path):
    space = SearchSpace(tiny_space(tmp_path))
    supernet = SuperNet(space, num_classes=10)
    layer = supernet.model.stages[0].blocks[0].conv_dw
    assert [str(e) for e in layer.experts] == ["3", "3d2", "5"] and set(layer.routings) == {"static", "soft", "hard"}
    arch = space.from_choices(["k3.3d2-hard", "k5-static", "k3-static", "k1.3-soft"])
    supernet.activate(arch)
    assert [str(e) for e in layer.active_experts] == ["3", "3d2"] and layer.routing == "hard"
    with pytest.raises(ValueError, match="not in this search space"):
        supernet.activate(space.from_choices(["k3.5-soft", "k5-static", "k3-static", "k3-hard"]))


def test_sampling_rules(tmp_path):
    space = SearchSpace(tiny_space(tmp_path))
    supernet = SuperNet(space, num_classes=10)
    rng = random.Random(0)
    uniform = [supernet.sample(rng) for _ in range(200)]
    assert all(len(s) == 1 and s[0] in space for s in uniform)
    first_stage = {str(s[0].stages[0]) for s in uniform}
    assert first_stage == {str(c) for c in space.stages[0]}, "uniform sampling should reach every choice"
    largest, smallest, middle = supernet.sample(rng, "sandwich")
    assert str(largest.stages[0]).startswith("k3.3d2.5") or len(largest.stages[0].experts) == 2
    assert str(smallest) == "k3-static_k3-static_k3-static_k1-static" and middle in space


def test_subnet_inherits_supernet_weights(tmp_path):
    """A sub-arch evaluated in the supernet equals a standalone model given the same weights."""
    space = SearchSpace(tiny_space(tmp_path))
    supernet = SuperNet(space, num_classes=10)
    arch = space.from_choices(["k3.5-soft", "k3.5-static", "k3-static", "k1.3-hard"])
    model = supernet.activate(arch).eval()
    x = torch.randn(2, 3, 16, 16)
    standalone = timm.create_model("morf_convnext_cifar", arch=arch, deploy=True, num_classes=10,
                                   depths=(1, 1, 1, 1), dims=(8, 16, 32, 64))
    standalone.load_state_dict(reparameterize_model(model).state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(standalone.eval()(x), model(x), atol=1e-5, rtol=0)


class Killed(Exception):
    pass


def _train(space, checkpoint_dir, kill_in_epoch=None):
    config = space.config
    splits = load_splits(config.data)
    torch.manual_seed(0)
    supernet = SuperNet(space, num_classes=10)
    loader = make_loader(splits.train, 8, 0, shuffle=True, seed=0, drop_last=True)
    epochs_seen = []

    def evaluate(model):  # runs before the epoch's checkpoint is written: raising here loses that epoch
        epochs_seen.append(len(epochs_seen) + 1)
        if kill_in_epoch == epochs_seen[-1]:
            raise Killed
        return {}

    history = fit(supernet.model, loader, config.supernet, torch.device("cpu"),
                  sampler=lambda rng, epoch: supernet.sample(rng, "sandwich"), evaluate=evaluate,
                  checkpoint=Checkpoint.in_dir(checkpoint_dir, "supernet"), seed=0, label="test")
    return supernet, history


def test_killed_training_resumes_from_last_epoch_exactly(tmp_path):
    space = SearchSpace(tiny_space(tmp_path))
    straight, history = _train(space, tmp_path / "straight")
    assert [h["epoch"] for h in history] == [1, 2] and all(h["images_per_s"] > 0 for h in history)
    assert (tmp_path / "straight" / "supernet.safetensors").is_file()

    with pytest.raises(Killed):
        _train(space, tmp_path / "interrupted", kill_in_epoch=2)
    resumed, resumed_history = _train(space, tmp_path / "interrupted")
    assert [h["epoch"] for h in resumed_history] == [1, 2]
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=f"{name} differs after resuming")


@pytest.mark.parametrize("kill_at_write", [3, 4])
def test_kill_between_an_epochs_weights_and_its_state_loses_only_that_epoch(tmp_path, monkeypatch, kill_at_write):
    """Killed between the two files epoch 2 writes (issue 17): resuming must still end as the straight run."""
    from morf_search.training import loop

    space = SearchSpace(tiny_space(tmp_path))
    straight, _ = _train(space, tmp_path / "straight")
    writes = []

    def dying(write):
        def wrapped(*args, **kwargs):
            writes.append(write.__name__)
            if len(writes) == kill_at_write:  # epoch 2 writes the 3rd and 4th files
                raise Killed
            return write(*args, **kwargs)
        return wrapped

    with monkeypatch.context() as patch:
        patch.setattr(loop, "save_weights", dying(loop.save_weights))
        patch.setattr(loop, "save_state", dying(loop.save_state))
        with pytest.raises(Killed):
            _train(space, tmp_path / "interrupted")
    assert sorted(writes[:2]) == ["save_state", "save_weights"], "one epoch writes weights and state"
    resumed, history = _train(space, tmp_path / "interrupted")
    assert [h["epoch"] for h in history] == [1, 2]
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=f"{name} differs after resuming")
    on_disk = load_weights(tmp_path / "interrupted" / "supernet.safetensors")
    for name, value in straight.model.state_dict().items():
        torch.testing.assert_close(on_disk[name], value, msg=f"{name}: supernet.safetensors is not the last epoch's")


@pytest.mark.parametrize("damage, message", [("truncated", "cannot be read back"),
                                             ("garbled", r"damaged \(.* fails its CRC check\)")])
def test_corrupt_checkpoint_is_a_clear_error(tmp_path, damage, message):
    from morf_search.core.fileio import CorruptFileError

    space = SearchSpace(tiny_space(tmp_path))
    with pytest.raises(Killed):
        _train(space, tmp_path / "run", kill_in_epoch=2)
    state = tmp_path / "run" / "supernet.state.pt"
    data = bytearray(state.read_bytes())
    if damage == "truncated":
        del data[100:]
    else:  # the archive still opens; the weights in its middle are garbage (torch.load would take them)
        data[len(data) // 2:len(data) // 2 + 64] = b"\xff" * 64
    state.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match=f"supernet.state.pt: {message}"):
        _train(space, tmp_path / "run")


def test_a_damaged_weights_file_is_rewritten_from_the_committed_state(tmp_path):
    space = SearchSpace(tiny_space(tmp_path))
    with pytest.raises(Killed):
        _train(space, tmp_path / "run", kill_in_epoch=2)
    weights = tmp_path / "run" / "supernet.safetensors"
    epoch1 = {name: value.clone() for name, value in load_weights(weights).items()}  # not a view of the file
    weights.write_bytes(weights.read_bytes()[:100])
    Checkpoint.in_dir(tmp_path / "run", "supernet").restore(SuperNet(space, num_classes=10).model, torch.device("cpu"))
    for name, value in load_weights(weights).items():
        torch.testing.assert_close(value, epoch1[name], msg=name)


def tiny_context(tmp_path, **space):
    """A run context over a tiny space, with a fresh (untrained) supernet."""
    config = tiny_space(tmp_path, **space)
    context = RunContext(RunDir.create(tmp_path / "run", dump_space(config), config.seed, "test"))
    context.new_supernet()
    return context


def test_oneshot_evaluation_deploys_inherited_weights_and_scores_them(tmp_path):
    context = tiny_context(tmp_path)
    space, evaluator = context.space, context.evaluator
    assert evaluator.supernet is context.supernet and evaluator.val is context.val_batches
    assert evaluator.calibration == [], "LayerNorm families need no BatchNorm calibration"
    small = space.smallest()
    large = space.from_choices(["k3.5-soft", "k3.5-static", "k3-static", "k1.3-soft"])
    a, b = evaluator.accuracy(small), evaluator.accuracy(large)
    assert 0 <= a <= 100 and 0 <= b <= 100
    small_deployed, large_deployed = evaluator.deploy(small), evaluator.deploy(large)
    assert count_params(small_deployed) < count_params(large_deployed)
    assert count_flops(small_deployed, (3, 16, 16)) < count_flops(large_deployed, (3, 16, 16))
    assert not any(isinstance(m, MoRFConv2d) for m in large_deployed.modules()), "scored in deploy form"
    assert a == evaluator.accuracy(small), "evaluating another arch must not disturb the next evaluation"


def test_resnet_subnets_recalibrate_batchnorm_without_disturbing_the_supernet(tmp_path):
    context = tiny_context(tmp_path, model=TINY_RESNET)
    space, supernet, evaluator = context.space, context.supernet, context.evaluator
    assert evaluator.calibration, "ResNet evaluation needs calibration batches"
    bn = supernet.model.bn1
    before = bn.running_mean.clone()
    deployed = evaluator.deploy(space.smallest())
    torch.testing.assert_close(bn.running_mean, before)
    assert not torch.allclose(deployed.bn1.running_mean, before), "the subnet's statistics were not re-estimated"
    # the estimate is the exact average of the calibration batches' statistics (checked on a bare BN)
    expected = torch.stack([x.mean((0, 2, 3)) for x, _ in evaluator.calibration]).mean(0)
    probe = torch.nn.Sequential(torch.nn.BatchNorm2d(3))
    with preserved_batchnorm(probe):
        recalibrate_batchnorm(probe, evaluator.calibration, torch.device("cpu"))
        torch.testing.assert_close(probe[0].running_mean, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(probe[0].running_mean, torch.zeros(3))


def test_schedule_spans_the_epochs_actually_trained():
    """An epoch override (fine-tuning, `export --epochs`) gets a whole schedule, not a truncated one."""
    config = parse_space({"supernet": {"epochs": 2, "warmup_epochs": 1, "lr": 0.01}}).supernet
    optimizer, scheduler = build_optimizer(torch.nn.Linear(2, 2), config, updates_per_epoch=5, epochs=6)
    rates = []
    for update in range(1, 31):
        scheduler.step_update(update)
        rates.append(optimizer.param_groups[0]["lr"])
    assert max(rates) > 0.009 and rates.index(max(rates)) in range(4, 7)  # warm-up: the first epoch
    assert rates[14] > 0.005 and rates[-1] < 0.001  # still high half-way, decayed at the end
