"""MoRF-ConvNeXt and MoRF-ResNet behave as timm models and re-parameterize exactly."""
import pytest
import timm
import torch
import torch.nn as nn
from timm.models.convnext import ConvNeXt
from timm.utils import reparameterize_model

import morf_search  # noqa: F401  (registers the models)
from morf_search import Arch, DynamicMoRFConv2d, MoRFConv2d, to_plain_convnext

ALL_MODELS = [f"morf_convnext_{s}" for s in ("atto", "femto", "pico", "nano", "tiny", "small", "base", "cifar")] + [
    f"morf_resnet{s}" for s in ("18", "26", "50", "_cifar")]
MIXED_CONVNEXT = "k3.5-soft_k3.3d2.7-hard2_k5.7.9-static_k3-hard"
MIXED_RESNET = "k1.3.5-soft_k3.5-hard_k1.3-static_k3d2-soft"
SMALL = dict(num_classes=7)


def test_every_variant_is_registered_and_runs():
    assert sorted(timm.list_models("morf_*")) == sorted(ALL_MODELS)
    for name in ALL_MODELS:
        model = timm.create_model(name, **SMALL).eval()
        cfg = model.pretrained_cfg
        assert {"input_size", "mean", "std", "first_conv", "classifier"} <= set(cfg)
        size = 32 if cfg["input_size"][-1] == 32 else 64
        with torch.no_grad():
            assert model(torch.randn(1, 3, size, size)).shape == (1, 7)
        assert any(isinstance(m, MoRFConv2d) for m in model.modules())


def test_small_variants_keep_resolution_in_the_first_stage():
    for name in ("morf_convnext_cifar", "morf_resnet_cifar"):
        model = timm.create_model(name, features_only=True)
        first_stage = model(torch.randn(1, 3, 32, 32))[1 if "resnet" in name else 0]
        assert first_stage.shape[-1] == 32, f"{name} downsamples 32 px input before its first stage"


def test_arch_argument_sets_each_stage():
    model = timm.create_model("morf_convnext_atto", arch=MIXED_CONVNEXT)
    assert str(model.arch) == MIXED_CONVNEXT
    layer = model.stages[1].blocks[0].conv_dw
    assert [str(e) for e in layer.experts] == ["3", "3d2", "7"] and layer.routing == "hard" and layer.top_k == 2
    resnet = timm.create_model("morf_resnet26", arch=Arch.parse(MIXED_RESNET))
    assert [str(e) for e in resnet.layer1[0].conv2.experts] == ["1", "3", "5"]
    assert isinstance(resnet.layer1[0].conv1, nn.Conv2d) and resnet.layer1[0].conv2.biases is None
    basic = timm.create_model("morf_resnet18")
    assert isinstance(basic.layer2[0].conv1, MoRFConv2d) and basic.layer2[0].conv1.stride == 2
    assert isinstance(basic.layer2[0].conv2, MoRFConv2d)


@pytest.mark.parametrize("kwargs,message", [
    (dict(pretrained=True), "No pretrained weights exist"),
    (dict(kernel_sizes=5), "kernel_sizes"),
    (dict(arch="k3-static_k3-static"), "has 2 stages"),
    (dict(arch="k3-static_k3-static_k4-static_k3-static"), "stage 2"),
])
def test_bad_model_arguments_are_clear(kwargs, message):
    with pytest.raises((ValueError, RuntimeError), match=message):
        timm.create_model("morf_convnext_atto", **kwargs)


@pytest.mark.parametrize("name,arch", [("morf_convnext_atto", MIXED_CONVNEXT), ("morf_resnet18", MIXED_RESNET)])
def test_timm_model_interface(name, arch):
    model = timm.create_model(name, arch=arch, **SMALL).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        assert pre_logits.shape == (2, model.num_features)
        torch.testing.assert_close(model.forward_head(features), model(x))
        final, intermediates = model.forward_intermediates(x)
        torch.testing.assert_close(final, features)
        assert len(intermediates) == len(model.feature_info)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)
    model.set_grad_checkpointing(True)
    model.train()
    model(x).sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "weights.0" in n)


@pytest.mark.parametrize("name,arch", [("morf_convnext_atto", MIXED_CONVNEXT), ("morf_resnet18", MIXED_RESNET)])
def test_features_only_backbone(name, arch):
    backbone = timm.create_model(name, arch=arch, features_only=True, out_indices=(1, 2))
    outputs = backbone(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outputs] == backbone.feature_info.channels()
    assert [64 // o.shape[-1] for o in outputs] == backbone.feature_info.reduction()


@pytest.mark.parametrize("name,arch", [
    ("morf_convnext_atto", MIXED_CONVNEXT),
    ("morf_convnext_atto", "k3.5.7-static_k3.5.7-static_k3.5.7-static_k3.5.7-static"),
    ("morf_resnet18", MIXED_RESNET),
    ("morf_resnet_cifar", "k1.3-hard_k3.5-soft_k1.3-static_k3-static"),
])
def test_reparameterized_model_matches_and_loads_strictly(name, arch):
    torch.manual_seed(1)
    model = timm.create_model(name, arch=arch, **SMALL)
    model.train()
    x = torch.randn(4, 3, 32, 32)
    for _ in range(2):  # move BN statistics and weights away from their init
        model(x).square().mean().backward()
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p -= 0.1 * p.grad
    model.eval()
    deployed = reparameterize_model(model)
    assert not any(isinstance(m, MoRFConv2d) for m in deployed.modules())
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(deployed(x), expected, atol=1e-5, rtol=0)
    fresh = timm.create_model(name, arch=arch, deploy=True, **SMALL).eval()
    fresh.load_state_dict(deployed.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), expected, atol=1e-5, rtol=0)
    dynamic = sum(isinstance(m, DynamicMoRFConv2d) for m in fresh.modules())
    assert (dynamic == 0) == Arch.parse(arch).is_static


def test_static_resnet_deploys_to_plain_3x3_convs():
    model = timm.create_model("morf_resnet50", arch="k1.3-static_k1.3-static_k1.3-static_k1.3-static")
    deployed = reparameterize_model(model.eval())
    conv2 = deployed.layer3[2].conv2
    assert type(conv2) is nn.Conv2d and conv2.kernel_size == (3, 3) and conv2.bias is None
    reference = timm.create_model("resnet50")
    assert sorted(deployed.state_dict()) == sorted(reference.state_dict())


def test_all_static_convnext_becomes_a_plain_timm_convnext():
    arch = "k3.5-static_k3d2.7-static_k5.9-static_k3-static"
    model = timm.create_model("morf_convnext_atto", arch=arch, **SMALL).eval()
    x = torch.randn(2, 3, 64, 64)
    plain = to_plain_convnext(model)
    assert type(plain) is ConvNeXt
    assert [s.blocks[0].conv_dw.kernel_size[0] for s in plain.stages] == [5, 7, 9, 3]
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model(x), atol=1e-5, rtol=0)
    # what a user without morf_search does: timm's own entrypoint, per-stage kernel sizes, strict load
    timm_model = timm.create_model("convnext_atto", kernel_sizes=(5, 7, 9, 3), **SMALL).eval()
    timm_model.load_state_dict(reparameterize_model(model).state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(timm_model(x), model(x), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="only all-static"):
        to_plain_convnext(timm.create_model("morf_convnext_atto", arch=MIXED_CONVNEXT))


def test_set_arch_activates_subsets_like_a_model_built_for_them():
    full = "k3.5.7-static_k3.5.7-static_k3.5.7-static_k3.5.7-static"
    sub = "k3.7-soft_k5-static_k3.5-hard_k7-static"
    supernet = timm.create_model("morf_convnext_atto", arch=full, routings=("static", "soft", "hard"), **SMALL)
    supernet.set_arch(sub)
    assert str(supernet.arch) == sub
    layer = supernet.stages[0].blocks[1].conv_dw
    assert [str(e) for e in layer.active_experts] == ["3", "7"] and layer.routing == "soft"
    deployed = reparameterize_model(supernet.eval())
    target = timm.create_model("morf_convnext_atto", arch=sub, deploy=True, **SMALL)
    target.load_state_dict(deployed.state_dict(), strict=True)
    with pytest.raises(ValueError, match="not among"):
        supernet.set_arch("k9-static_k3-static_k3-static_k3-static")
    with pytest.raises(ValueError, match="deployed"):
        deployed.set_arch(sub)


def test_a_family_is_one_registry_entry_away_from_the_schema(monkeypatch):
    """Registering a family makes it valid in space files and buildable, with no change to the schema."""
    from morf_search.models import registry
    from morf_search.space.schema import parse_space
    from morf_search.space.search_space import SearchSpace

    for name in registry.list_families():
        family = registry.get_family(name)
        family.implementation()
        assert all(timm.is_model(family.timm_name(size)) for size in family.sizes), name
    monkeypatch.setitem(registry._FAMILIES, "narrow", registry.ModelFamily(
        name="narrow", module="morf_search.models.morf_resnet", entrypoints={"cifar": "morf_resnet_cifar"},
        num_stages=4, depth_arg="layers", width_arg="channels", norm="batch", default_kernel=3))
    config = parse_space({"model": {"family": "narrow", "size": "cifar", "depths": [1, 1, 1, 1],
                                    "dims": [8, 8, 8, 8]}, "space": {"kernels": [1, 3]}})
    space = SearchSpace(config)
    assert space.family.uses_batchnorm and config.model.timm_name == "morf_resnet_cifar"
    model = space.build_model(space.smallest(), num_classes=3)
    assert model.layer1[0].conv1.out_channels == 8 and model(torch.randn(1, 3, 16, 16)).shape == (1, 3)
