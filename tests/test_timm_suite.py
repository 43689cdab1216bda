"""What timm's own model test-suite (its tests/test_models.py) checks, on morf_convnext_atto and morf_resnet18.

Each test repeats one of timm's checks (forward/backward, default cfg, features_only,
forward_intermediates, TorchScript, FX feature extraction) on a routed arch that mixes
static, soft and hard stages, on the training form and, where timm's test runs a model
for inference, on the deploy form too; small inputs keep it fast.
"""
import io
import math

import pytest
import timm
import torch
from timm.layers import get_notrace_functions, get_notrace_modules
from timm.utils import reparameterize_model
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import morf_search  # noqa: F401  (registers the models)

# static, soft, hard top-2 and hard top-1 stages (ResNet: static, soft, hard top-1)
MODELS = [("morf_convnext_atto", "k3.5-soft_k3.3d2.7-hard2_k5.7.9-static_k3.5-hard"),
          ("morf_resnet18", "k1.3.5-soft_k3.5-hard_k1.3-static_k3d2.5-soft")]
SIZE = 32


@pytest.fixture(autouse=True, scope="module")
def _simple_jit_executor():
    """As timm's suite does: no profiling passes, which cost minutes per scripted model and test nothing here."""
    previous = torch._C._jit_set_profiling_mode(False)
    yield
    torch._C._jit_set_profiling_mode(previous)


def build(name, arch, form="train", **kwargs):
    """The model in either form, seeded: two builds of one name hold the same weights."""
    torch.manual_seed(0)
    model = timm.create_model(name, arch=arch, **kwargs)
    return reparameterize_model(model.eval()) if form == "deploy" else model


def decisive_batch(batch=4):
    """Inputs whose hard routers pick different experts per sample (top-1 inference groups them)."""
    torch.manual_seed(3)
    return torch.randn(batch, 3, SIZE, SIZE) * torch.linspace(0.2, 3.0, batch)[:, None, None, None]


@pytest.mark.parametrize("name,arch", MODELS)
def test_forward_and_backward_reach_every_parameter(name, arch):
    model = build(name, arch, num_classes=42).train()
    outputs = model(decisive_batch(2))
    outputs.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    assert outputs.shape == (2, 42) and not outputs.isnan().any()
    model.eval()
    with torch.no_grad():
        assert not build(name, arch, "deploy")(torch.randn(1, 3, SIZE, SIZE)).isnan().any()


@pytest.mark.parametrize("name,arch", MODELS)
def test_default_cfg_matches_the_model(name, arch):
    model = build(name, arch).eval()
    cfg, state = model.pretrained_cfg, model.state_dict()
    assert f"{cfg['classifier']}.weight" in state and f"{cfg['first_conv']}.weight" in state
    x = torch.randn(1, *cfg["input_size"])
    with torch.no_grad():
        assert model.forward_features(x).shape[-2:] == cfg["pool_size"]
        model.reset_classifier(0)
        assert model(x).shape == (1, model.num_features)
        model.reset_classifier(0, "")
        assert model(x).shape[-2:] == cfg["pool_size"]


@pytest.mark.parametrize("name,arch", MODELS)
def test_features_only_and_forward_intermediates_agree_with_feature_info(name, arch):
    backbone = build(name, arch, features_only=True).eval()
    x = decisive_batch(1)
    with torch.no_grad():
        features = backbone(x)
    assert [f.shape[1] for f in features] == backbone.feature_info.channels()
    assert all(f.shape[-1] <= math.ceil(SIZE / r) + 1 for f, r in zip(features, backbone.feature_info.reduction()))

    model = build(name, arch).eval()
    info = timm.models.FeatureInfo(model.feature_info, len(model.feature_info))
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x, output_fmt="NCHW")
        assert [f.shape[1] for f in intermediates] == info.channels()
        torch.testing.assert_close(final, model.forward_features(x))
        for feature, intermediate in zip(features, intermediates):
            torch.testing.assert_close(feature, intermediate)
        model.set_grad_checkpointing()
        torch.testing.assert_close(model.forward_intermediates(x, output_fmt="NCHW")[0], final, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("form", ["train", "deploy"])
@pytest.mark.parametrize("name,arch", MODELS)
def test_torchscript_scripts_the_model_and_saves(name, arch, form):
    """timm's test_model_forward_torchscript, plus a save/load round trip and training through the script."""
    with timm.layers.set_scriptable(True):
        model = build(name, arch, form, num_classes=5).eval()
    scripted = torch.jit.script(model)
    x = decisive_batch()
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(scripted(x), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(loaded(x), expected, atol=1e-5, rtol=0)
    if form == "train":
        scripted.train()
        outputs = scripted(x)
        torch.testing.assert_close(outputs, model.train()(x), atol=1e-5, rtol=0)
        outputs.mean().backward()
        assert all(p.grad is not None for p in model.parameters())


def _fx_model(model, train=False):
    """timm's _create_fx_model: its leaf modules and functions, the graph's last node as the output."""
    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                         param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    return create_feature_extractor(model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]],
                                    tracer_kwargs=tracer_kwargs)


@pytest.mark.parametrize("form", ["train", "deploy"])
@pytest.mark.parametrize("name,arch", MODELS)
def test_fx_feature_extraction_traces_both_forms(name, arch, form):
    model = build(name, arch, form).eval()
    x = decisive_batch()
    with torch.inference_mode():
        expected = model(x)
        (traced,) = _fx_model(model)(x).values()
    assert torch.equal(traced, expected)
    fx_backbone = build(name, arch, form, features_only=True, feature_cls="fx").eval()
    with torch.no_grad():
        _, intermediates = model.forward_intermediates(x)
        for feature, intermediate in zip(fx_backbone(x), intermediates):
            torch.testing.assert_close(feature, intermediate)
    if form == "train":
        (outputs,) = _fx_model(model.train(), train=True)(x[:2]).values()
        outputs.mean().backward()
        assert outputs.shape == (2, model.num_classes) and all(p.grad is not None for p in model.parameters())
