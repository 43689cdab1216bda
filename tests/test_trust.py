"""A search you can trust: distillation, routing that really routes, rank checks and baselines."""
import json
import random
from types import SimpleNamespace

import pandas as pd
import pytest
import timm
import torch
import torch.nn as nn
from timm.utils import reparameterize_model
from torch.utils.data import TensorDataset

import morf_search  # noqa: F401  (registers the models)
from morf_search.search.fidelity import rank_agreement, spread_by_latency, verdict
from morf_search.search.trials import routing_fields
from morf_search.space.schema import parse_space
from morf_search.training import loop
from morf_search.training.data import make_loader
from morf_search.training.routing_stats import RoutingRecorder

# -- in-place distillation ---------------------------------------------------------------------------------

class Branches(nn.Module):
    """Two disjoint 'archs': the teacher uses branch a, the student branch b."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.active = nn.Linear(4, 3), nn.Linear(4, 3), "a"

    def set_arch(self, arch):
        self.active = arch

    def forward(self, x):
        return getattr(self, self.active)(x)


def _one_step_gradients(monkeypatch, distill):
    """Gradients of both branches after one training step with sampler [teacher a, student b]."""
    grads = {}

    class Recording:
        param_groups = [{"lr": 0.0}]

        def __init__(self, model):
            self.model = model

        def zero_grad(self, set_to_none=True):
            self.model.zero_grad(set_to_none=set_to_none)

        def step(self):
            grads.update({n: p.grad.clone() for n, p in self.model.named_parameters()})

    monkeypatch.setattr(loop, "build_optimizer", lambda model, config, updates, epochs: (
        Recording(model), SimpleNamespace(step_update=lambda n: None)))
    torch.manual_seed(0)
    model = Branches()
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    config = parse_space({"supernet": {"label_smoothing": 0.0, "balance_loss_weight": 0.0}}).supernet
    loader = make_loader(TensorDataset(x, y), batch_size=8, workers=0, shuffle=False)
    loop.fit(model, loader, config, torch.device("cpu"), sampler=lambda rng, epoch: ["a", "b"], epochs=1,
             distill=distill)
    return model, x, y, grads


def _grads_of(loss, params):
    return torch.autograd.grad(loss, params)


@pytest.mark.parametrize("distill", [True, False])
def test_students_learn_from_the_detached_teacher_and_the_teacher_from_labels(monkeypatch, distill):
    model, x, y, grads = _one_step_gradients(monkeypatch, distill)
    teacher_loss = nn.functional.cross_entropy(model.a(x), y)
    expected_a = _grads_of(teacher_loss, [model.a.weight, model.a.bias])
    torch.testing.assert_close(grads["a.weight"], expected_a[0], msg="the teacher learns from labels only")
    torch.testing.assert_close(grads["a.bias"], expected_a[1])
    if distill:
        student_loss = loop.soft_target_loss(model.b(x), model.a(x).detach().softmax(-1))
    else:
        student_loss = nn.functional.cross_entropy(model.b(x), y)
    expected_b = _grads_of(student_loss, [model.b.weight])[0]
    torch.testing.assert_close(grads["b.weight"], expected_b, msg="the student's loss is not what it should be")
    labels_b = _grads_of(nn.functional.cross_entropy(model.b(x), y), [model.b.weight])[0]
    assert distill == (not torch.allclose(grads["b.weight"], labels_b)), "distillation must change the student's target"


def test_soft_target_loss_is_cross_entropy_against_probabilities():
    logits, target = torch.randn(5, 4), torch.randint(0, 4, (5,))
    one_hot = nn.functional.one_hot(target, 4).float()
    torch.testing.assert_close(loop.soft_target_loss(logits, one_hot), nn.functional.cross_entropy(logits, target))


def test_sampler_puts_the_teacher_first_and_the_widest_sets_first(tmp_path):
    from morf_search.space.search_space import SearchSpace
    from morf_search.training.supernet import SuperNet

    config = parse_space({"model": {"depths": [1, 1, 1, 1], "dims": [8, 8, 8, 8]},
                          "space": {"kernels": [3, 5, 7], "max_experts": 2},
                          "supernet": {"sampling": "uniform", "distillation": True, "widest_first_epochs": 2}})
    space = SearchSpace(config)
    sample = SuperNet(space, num_classes=3).sampler(config.supernet)
    rng = random.Random(0)
    for epoch, widest in ((0, True), (1, True), (2, False)):
        steps = [sample(rng, epoch) for _ in range(60)]
        assert all(len(s) == 2 and s[0] == space.largest() for s in steps), "the teacher comes first every step"
        sizes = {len(stage.experts) for s in steps for stage in s[1].stages}
        assert (sizes == {2}) == widest, f"epoch {epoch}: expert-set sizes {sizes}"


# -- routing that routes -------------------------------------------------------------------------------------

def _forced(routing, logits_bias):
    arch = "_".join([f"k3.5-{routing}", "k3-static", "k3-static", "k3-static"])
    model = timm.create_model("morf_convnext_cifar", arch=arch, depths=(1, 1, 1, 1), dims=(8, 8, 8, 8),
                              num_classes=3).eval()
    for block in model.stages[0].blocks:
        fc2 = block.conv_dw.router.fc2
        nn.init.zeros_(fc2.weight)
        fc2.bias.data = torch.tensor(logits_bias)
    return model


@pytest.mark.parametrize("deploy", [False, True])
def test_a_router_forced_to_one_expert_is_flagged(deploy):
    model = _forced("hard", [8.0, -8.0])
    model = reparameterize_model(model) if deploy else model
    with RoutingRecorder(model) as recorder:
        model(torch.randn(6, 3, 16, 16))
    (stage,) = recorder.summary()
    assert stage["overall"] == [1.0, 0.0] and stage["entropy"] == 0.0
    assert "100% of its selections to expert 3" in stage["flag"] and "static layer in disguise" in stage["flag"]
    fields = routing_fields(recorder.summary())
    assert fields["s0_expert_share"] == "1.000/0.000" and "stage 0" in fields["routing_warning"]


def test_uniform_soft_weights_are_flagged_and_routing_soft_weights_are_not():
    uniform = _forced("soft", [0.0, 0.0])
    with RoutingRecorder(uniform) as recorder:
        uniform(torch.randn(6, 3, 16, 16))
    assert "not input-adaptive" in recorder.summary()[0]["flag"]
    routed = _forced("soft", [0.0, 0.0])
    for block in routed.stages[0].blocks:  # logits now depend strongly on the input
        nn.init.normal_(block.conv_dw.router.fc1.weight, std=10.0)
        nn.init.normal_(block.conv_dw.router.fc2.weight, std=10.0)
    with RoutingRecorder(routed) as recorder:
        routed(torch.randn(32, 3, 16, 16) + 3 * torch.randn(32, 3, 1, 1))  # each image its own colour
    (stage,) = recorder.summary()
    assert stage["flag"] == "" and 0.0 < stage["entropy"] <= 1.0 and abs(sum(stage["overall"]) - 1) < 1e-6


# -- rank agreement -------------------------------------------------------------------------------------------

def test_rank_agreement_and_its_verdict():
    perfect = rank_agreement([1, 2, 3, 4, 5, 6], [10, 20, 30, 40, 50, 60], top=3)
    assert perfect.kendall_tau == pytest.approx(1.0) and perfect.top_overlap == 3
    assert perfect.kendall_tau_90[0] <= 1.0 <= perfect.kendall_tau_90[1] + 1e-9 and "can be trusted" in verdict(perfect)
    reversed_ = rank_agreement([1, 2, 3, 4, 5, 6], [60, 50, 40, 30, 20, 10], top=3)
    assert reversed_.kendall_tau == pytest.approx(-1.0) and reversed_.top_overlap == 0
    assert verdict(reversed_).startswith("WARNING")
    with pytest.raises(ValueError, match="at least 3"):
        rank_agreement([1, 2], [1, 2])


def test_archs_are_spread_over_the_latency_range():
    rng = random.Random(0)
    picked = spread_by_latency(list(range(100)), latency=lambda v: v, count=5, rng=rng)
    assert [p // 20 for p in picked] == [0, 1, 2, 3, 4]



# -- does MoRF pay off: baselines, seeds, the report's table, the run's rank check -----------------------------

@pytest.fixture(scope="module")
def judged_run(tmp_path_factory):
    """A tiny run with two finalists, two seeds and a rank check of three archs."""
    from test_data import write_cifar10
    from test_run import morf, space_file

    root = tmp_path_factory.mktemp("judged")
    write_cifar10(root / "cifar", per_batch=16, test=32)
    path = space_file(root, root / "cifar", search={"num_trials": 6, "rank_check": 3},
                      space={"stages": [{"kernels": [3, 5]}, {"kernels": [3, 5]}, {"kernels": [3]}, {"kernels": [3]}]},
                      finalists={"top_k": 2, "epochs": 1, "seeds": 2})
    result = morf("run", str(path), "--name", "judged", cwd=root)
    return root / "runs" / "judged", result


def test_baselines_inside_the_space_are_fine_tuned_and_outside_trained_from_scratch(judged_run):
    run, _ = judged_run
    references = pd.read_csv(run / "references.csv")
    baselines = references[references["engine"] == "baseline"]
    default = baselines[baselines["role"].str.startswith("family default")]
    assert set(default["arch"]) == {"k7-static_k7-static_k7-static_k7-static"}, "ConvNeXt's own network: 7x7"
    assert (default["trained"] == "trained from scratch, 2 epochs (supernet's plus fine-tuning epochs)").all()
    assert sorted(default["seed"]) == [0, 1]
    plain = baselines[~baselines["role"].str.startswith("family default")]
    assert not plain.empty and plain["arch"].map(lambda a: all(len(s.split("-")[0].split(".")) == 1
                                                               for s in a.split("_"))).all()
    assert (plain["trained"] == "fine-tuned from the supernet, 1 epochs").all()
    for arch in plain["arch"].unique():
        assert (run / "finalists" / arch / "finetune.state.pt").is_file(), "fine-tuned like a finalist"
    assert (run / "finalists" / default["arch"].iloc[0] / "scratch-seed1.state.pt").is_file()
    assert baselines["latency_ms"].gt(0).all() and baselines["accuracy"].between(0, 100).all()


def test_report_opens_with_one_comparison_row_per_finalist(judged_run):
    run, _ = judged_run
    finalists = pd.read_csv(run / "finalists.csv")
    assert len(finalists) >= 1 and finalists["accuracy_finetuned_std"].notna().all()
    assert finalists["accuracy_seeds"].str.count("/").eq(1).all(), "two seeds per finalist"
    report = (run / "report.md").read_text()
    first_section = report.split("\n## ")[1]
    assert first_section.startswith("Did MoRF pay off?")
    table = [line for line in first_section.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(table) == len(finalists)
    for line, (_, row) in zip(table, finalists.iterrows()):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == row["arch"] and cells[1] == f"{row['latency_ms']:.3f}"
        assert cells[2] == f"{row['accuracy_finetuned']:.2f} ± {row['accuracy_finetuned_std']:.2f}"
        assert cells[3] == row["baseline_arch"]


def test_the_run_checks_how_well_its_oneshot_accuracy_ranks(judged_run):
    run, result = judged_run
    manifest = json.loads((run / "manifest.json").read_text())
    check = manifest["rank_check"]
    tau = check["kendall_tau"]
    assert check["archs"] == 3 and check["verdict"]
    assert -1 <= tau <= 1 or (tau != tau and "could not rank" in check["verdict"]), "a tau, or why there is none"
    rows = pd.read_csv(run / "rank_check.csv")
    assert len(rows) == 3 and rows["standalone_accuracy"].between(0, 100).all()
    assert "rank check: Kendall tau" in result.stderr
    assert "## How far to trust this front" in (run / "report.md").read_text()
    assert check["verdict"] in (run / "report.md").read_text()
    trials = pd.read_csv(run / "trials.csv")
    assert "routing_warning" in trials and any(c.endswith("_expert_share") for c in trials)


def test_a_rank_check_with_nothing_to_rank_says_so():
    flat = rank_agreement([10.0, 10.0, 10.0], [50.0, 60.0, 70.0])
    assert flat.kendall_tau != flat.kendall_tau and "could not rank" in verdict(flat)


def test_a_context_unpickles_as_this_process_one(tmp_path):
    """Ray ships the context to trial workers: it must come back as the process's open context, not be
    rebuilt (data, supernet, batches) for every trial."""
    import pickle

    import cloudpickle

    from morf_search.context import RunContext
    from morf_search.rundir import RunDir

    RunDir.create(tmp_path / "run", "{}\n", 0, "test")
    context = RunContext.open(tmp_path / "run")
    assert pickle.loads(pickle.dumps(context)) is context
    assert cloudpickle.loads(cloudpickle.dumps(context)) is context
