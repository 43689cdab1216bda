"""MoRFConv2d against an independent reference: one convolution per expert, outputs mixed."""
import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.utils import reparameterize_model

from morf_search import DynamicMoRFConv2d, Expert, MoRFConv2d, total_balance_loss
from morf_search.latency.cost import count_params
from morf_search.layer.kernels import per_sample_conv2d, top1_conv2d
from morf_search.layer.routing import dynamic_weights, load_balance_loss

CHANNELS, SIZE = 8, 11
KERNEL_SETS = {"3": [3], "3579": [3, 5, 7, 9], "59": [5, 9], "dilated": [3, "3d2", 5]}
ROUTINGS = ["static", "soft", "hard"]


def reference_weights(layer: MoRFConv2d, x: torch.Tensor) -> torch.Tensor:
    """Mixing weights per sample and output channel, shape (B, E, out), computed from scratch."""
    index = list(layer.active)
    if layer.routing == "static":
        mix = torch.softmax(layer.static_logits[index], dim=0)
        return mix.unsqueeze(0).expand(x.shape[0], -1, -1)
    logits = layer.router(x)[:, index] / layer.tau
    if layer.routing == "soft":
        mix = torch.softmax(logits, dim=1)
    else:
        top = logits.topk(layer.top_k, dim=1)
        mix = torch.zeros_like(logits)
        for b in range(x.shape[0]):
            mix[b, top.indices[b]] = torch.softmax(top.values[b], dim=0)
    return mix.unsqueeze(-1).expand(-1, -1, layer.out_channels)


def reference_forward(layer: MoRFConv2d, x: torch.Tensor) -> torch.Tensor:
    mix = reference_weights(layer, x)
    out = 0
    for slot, i in enumerate(layer.active):
        expert = layer.experts[i]
        bias = layer.biases[i] if layer.biases is not None else None
        y = F.conv2d(x, layer.weights[i], bias, layer.stride, expert.span // 2, expert.dilation, layer.groups)
        out = out + mix[:, slot, :, None, None] * y
    return out


def make_layer(kernels, routing, groups, top_k=1, stride=1):
    layer = MoRFConv2d(CHANNELS, CHANNELS, kernels, routing, stride=stride, groups=groups, top_k=top_k)
    with torch.no_grad():  # make static mixing non-uniform so a wrong mix cannot pass
        if layer.static_logits is not None:
            layer.static_logits.normal_()
    return layer


# hard routing twice: top-1 (inference groups samples by expert) and top-2 (per-sample kernels)
GRID = list(itertools.product(KERNEL_SETS, ROUTINGS + ["hard2"], [1, 2], ["depthwise", "full"], [1, 8], [False, True]))


def grid_layer(kernels, routing, stride, conv):
    groups = CHANNELS if conv == "depthwise" else 1
    top_k = 2 if routing == "hard2" and len(KERNEL_SETS[kernels]) > 1 else 1
    return make_layer(KERNEL_SETS[kernels], routing.rstrip("2"), groups, top_k, stride).eval()


@pytest.mark.parametrize("kernels,routing,stride,conv,batch,channels_last", GRID)
def test_fused_forward_matches_per_expert_reference(kernels, routing, stride, conv, batch, channels_last):
    layer = grid_layer(kernels, routing, stride, conv)
    x = torch.randn(batch, CHANNELS, SIZE, SIZE)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = reference_forward(layer, x)
        actual = layer(x)
    assert actual.shape == expected.shape == (batch, CHANNELS, (SIZE - 1) // stride + 1, (SIZE - 1) // stride + 1)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kernels,routing,stride,conv,batch,channels_last", GRID)
def test_deploy_form_matches_training_form(kernels, routing, stride, conv, batch, channels_last):
    layer = grid_layer(kernels, routing, stride, conv)
    layer.tau = 0.7  # the temperature must survive deployment
    x = torch.randn(batch, CHANNELS, SIZE, SIZE)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    deploy = layer.fuse()
    with torch.no_grad():
        torch.testing.assert_close(deploy(x), layer(x), atol=1e-5, rtol=0)
    largest = max(Expert.parse(k).span for k in KERNEL_SETS[kernels])
    if routing == "static":
        assert type(deploy) is nn.Conv2d and deploy.kernel_size == (largest, largest)
    else:
        assert isinstance(deploy, DynamicMoRFConv2d)
        assert deploy.bank.shape[0] == len(KERNEL_SETS[kernels]) and deploy.kernel_size == largest


@pytest.mark.parametrize("routing", ROUTINGS)
def test_timm_reparameterize_model_swaps_in_deploy_form(routing):
    model = nn.Sequential(make_layer([3, 5, 7], routing, CHANNELS), nn.ReLU(), make_layer([3, 5], routing, 1))
    model.train()
    model(torch.randn(2, CHANNELS, SIZE, SIZE))  # a training forward leaves state behind; copying must cope
    model.eval()
    deployed = reparameterize_model(model)
    expected_type = nn.Conv2d if routing == "static" else DynamicMoRFConv2d
    assert [type(deployed[0]), type(deployed[2])] == [expected_type, expected_type]
    assert not any(isinstance(m, MoRFConv2d) for m in deployed.modules())
    x = torch.randn(4, CHANNELS, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), model(x), atol=1e-5, rtol=0)


def test_deploy_keeps_only_active_experts_and_they_still_match():
    layer = make_layer([3, 5, 7, 9], "soft", CHANNELS).eval()
    layer.set_active([3, 7])
    deploy = layer.fuse()
    assert deploy.bank.shape[:1] == (2,) and deploy.kernel_size == 7
    assert deploy.router.fc2.out_features == 2
    x = torch.randn(3, CHANNELS, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(deploy(x), reference_forward(layer, x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("routing", ["soft", "hard"])
def test_deploy_state_dict_stores_each_expert_at_its_own_size_and_loads_padded_again(routing):
    layer = make_layer([3, "3d2", 7], routing, CHANNELS).eval()
    deploy = layer.fuse()
    state = deploy.state_dict()
    assert "bank" not in state
    assert {key: tuple(state[key].shape[-2:]) for key in state if key.startswith("bank_")} == {
        "bank_k3": (3, 3), "bank_k3d2": (3, 3), "bank_k7": (7, 7)}
    stored = sum(t.numel() for t in state.values())
    assert stored < sum(p.numel() for p in deploy.parameters())  # the padding zeros are not stored
    assert count_params(deploy) == stored
    fresh = make_layer([3, "3d2", 7], routing, CHANNELS).fuse()  # other weights, same shapes
    fresh.load_state_dict(state)  # strict
    assert torch.equal(fresh.bank, deploy.bank)  # padded (and dilated) back into place exactly
    padded = dict(state, bank=deploy.bank.detach().clone())  # an export written before: a padded bank
    for key in ("bank_k3", "bank_k3d2", "bank_k7"):
        del padded[key]
    older = make_layer([3, "3d2", 7], routing, CHANNELS).fuse()
    older.load_state_dict(padded)
    assert torch.equal(older.bank, deploy.bank)
    with pytest.raises(RuntimeError, match="bank"):
        fresh.load_state_dict({k: v for k, v in state.items() if k != "bank_k7"})


@pytest.mark.parametrize("routing", ROUTINGS)
def test_gradients_reach_active_experts_only(routing):
    layer = make_layer([3, 5, 7, 9], routing, CHANNELS, top_k=2, stride=1).train()
    layer.set_active([3, 7, 9])
    x = torch.randn(8, CHANNELS, SIZE, SIZE)
    layer(x).square().mean().backward()
    grads = [w.grad for w in layer.weights]
    assert grads[1] is None, "inactive expert 5 received a gradient"
    expected = (0, 2, 3)
    if routing == "hard":  # only experts some sample selected
        expected = tuple(sorted({(0, 2, 3)[j] for j in layer.router(x)[:, [0, 2, 3]].topk(2).indices.flatten().tolist()}))
    for i in (0, 2, 3):
        if i not in expected:
            assert grads[i] is None or grads[i].abs().sum() == 0
            continue
        assert grads[i] is not None and grads[i].abs().sum() > 0, f"active expert {layer.experts[i]} got no gradient"
    if routing == "static":
        assert layer.static_logits.grad[[0, 2, 3]].abs().sum() > 0
        assert layer.static_logits.grad[1].abs().sum() == 0
    else:
        router_grads = [p.grad for p in layer.router.parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in router_grads)


@pytest.mark.parametrize("top_k", [1, 2])
def test_hard_routing_touches_exactly_top_k_experts_per_sample(top_k):
    layer = make_layer([3, 5, 7, 9], "hard", CHANNELS, top_k=top_k).train()
    inputs = torch.randn(6, CHANNELS, SIZE, SIZE)
    chosen_sets = set()
    for x in inputs.split(1):
        layer.zero_grad()
        chosen = set(layer.router(x).topk(top_k, dim=1).indices[0].tolist())
        layer(x).square().mean().backward()
        touched = {i for i, w in enumerate(layer.weights) if w.grad is not None and w.grad.abs().sum() > 0}
        assert touched == chosen
        assert all(p.grad.abs().sum() > 0 for p in layer.router.parameters()), "straight-through must reach the router"
        chosen_sets.add(frozenset(chosen))
    # a batch mixes samples routed differently; each expert's gradient comes only from its samples
    layer.zero_grad()
    layer(inputs).square().mean().backward()
    union = set().union(*chosen_sets)
    assert {i for i, w in enumerate(layer.weights) if w.grad is not None and w.grad.abs().sum() > 0} == union


def test_hard_forward_uses_only_top_k_experts():
    layer = make_layer([3, 5, 7, 9], "hard", CHANNELS, top_k=1).eval()
    x = torch.randn(4, CHANNELS, SIZE, SIZE)
    with torch.no_grad():
        before = layer(x)
        choice = layer.router(x).argmax(1)
        unused = sorted(set(range(4)) - set(choice.tolist()))
        for i in unused:  # wrecking unselected experts must not change the output
            layer.weights[i].fill_(1e6)
        torch.testing.assert_close(layer(x), before)


@pytest.mark.parametrize("kernels,stride", [([3, 5, 7, 9], 1), ([3, "3d2", 5], 2)])
def test_top1_inference_groups_samples_by_expert_and_matches_per_sample_kernels(kernels, stride, monkeypatch):
    layer = make_layer(kernels, "hard", CHANNELS, top_k=1, stride=stride).eval()
    x = torch.randn(16, CHANNELS, SIZE, SIZE) + torch.randn(16, CHANNELS, 1, 1)  # samples the router tells apart
    with torch.no_grad():
        for param in layer.router.parameters():  # a router decisive enough to split the batch
            param.normal_()
        logits = layer.router(x)
        chosen = sorted(set(logits.argmax(1).tolist()))
        assert len(chosen) > 1, "the batch must mix experts to test the grouping"
        bank, bias_bank = layer._bank()
        experts = layer.active_experts
        per_sample = per_sample_conv2d(x, dynamic_weights(logits, "hard", 1, 1.0), bank, bias_bank, stride,
                                       CHANNELS)
        convolved = []  # (kernel side, dilation) of every convolution the grouped path runs
        conv2d = F.conv2d
        monkeypatch.setattr(F, "conv2d", lambda inputs, weight, *args: (
            convolved.append((weight.shape[-1], args[3])), conv2d(inputs, weight, *args))[1])
        grouped = top1_conv2d(x, logits.argmax(1), bank, bias_bank, [e.kernel_size for e in experts],
                              [e.dilation for e in experts], stride, CHANNELS)
        assert convolved == [(experts[i].kernel_size, experts[i].dilation) for i in chosen]
        torch.testing.assert_close(grouped, per_sample, atol=1e-5, rtol=0)
        torch.testing.assert_close(layer(x), per_sample, atol=1e-5, rtol=0)


def test_traced_deploy_form_routes_each_input_anew():
    """A traced graph must not freeze the experts the example input happened to select."""
    deploy = make_layer([3, 5, 7, 9], "hard", CHANNELS, top_k=1).eval().fuse()
    example, other = torch.randn(2, 1, CHANNELS, SIZE, SIZE)
    for _ in range(50):
        if deploy.router(other).argmax().item() != deploy.router(example).argmax().item():
            break
        other = torch.randn(1, CHANNELS, SIZE, SIZE)
    assert deploy.router(other).argmax().item() != deploy.router(example).argmax().item()
    with torch.no_grad():
        traced = torch.jit.trace(deploy, example, check_trace=False)
        torch.testing.assert_close(traced(other), deploy(other), atol=1e-5, rtol=0)


@pytest.mark.parametrize("routing", ROUTINGS + ["hard2"])
def test_torchscript_runs_both_forms_as_eager_does(routing):
    """torch.jit.script compiles the layer's own forward (no trace): routing still depends on each input."""
    top_k = 2 if routing == "hard2" else 1
    layer = make_layer([3, "3d2", 5, 7], routing.rstrip("2"), CHANNELS, top_k=top_k)
    layer.set_active([3, "3d2", 7])
    x = torch.randn(6, CHANNELS, SIZE, SIZE) + 3 * torch.randn(6, CHANNELS, 1, 1)
    if layer.router is not None:
        with torch.no_grad():
            for param in layer.router.parameters():  # decisive, so samples pick different experts
                param.normal_()
    scripted = torch.jit.script(layer)
    out = scripted(x)
    torch.testing.assert_close(out, layer(x), atol=1e-5, rtol=0)
    out.square().mean().backward()
    assert layer.weights[1].grad is not None and layer.weights[2].grad is None  # experts 3, 3d2, 5, 7: 5 is inactive
    if routing.startswith("hard"):
        torch.testing.assert_close(scripted.last_balance_loss, load_balance_loss(layer._router_logits(x), top_k))
    layer.eval()
    deployed = torch.jit.script(layer.fuse())
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), layer(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.jit.script(layer.eval())(x), layer(x), atol=1e-5, rtol=0)


def test_gumbel_hard_routing_still_selects_top_k():
    layer = make_layer([3, 5, 7], "hard", CHANNELS, top_k=1)
    layer.gumbel = True
    layer.train()
    x = torch.randn(8, CHANNELS, SIZE, SIZE)
    layer(x).sum().backward()
    touched = sum(int(w.grad.abs().sum() > 0) for w in layer.weights if w.grad is not None)
    assert 1 <= touched <= 3 and layer.router.fc2.weight.grad.abs().sum() > 0


def test_load_balance_loss_is_one_when_uniform_and_grows_when_collapsed():
    uniform = torch.tensor([[4.0, 0.0, 0.0, 0.0], [0.0, 4.0, 0.0, 0.0], [0.0, 0.0, 4.0, 0.0], [0.0, 0.0, 0.0, 4.0]])
    collapsed = torch.tensor([[4.0, 0.0, 0.0, 0.0]] * 4)
    assert load_balance_loss(uniform, 1).item() == pytest.approx(1.0)
    assert load_balance_loss(collapsed, 1).item() > 2.5


def test_layer_exposes_balance_loss_for_training():
    layer = make_layer([3, 5, 7], "hard", CHANNELS).train()
    model = nn.Sequential(layer)
    model(torch.randn(4, CHANNELS, SIZE, SIZE))
    loss = total_balance_loss(model)
    assert loss is not None and loss.requires_grad and loss.item() >= 1.0 - 1e-6
    assert total_balance_loss(model) is None, "a loss must be consumed once"
    layer.eval()
    model(torch.randn(4, CHANNELS, SIZE, SIZE))
    assert total_balance_loss(model) is None, "no balance loss outside training"


def test_set_active_switches_routing_and_restricts_experts():
    layer = MoRFConv2d(CHANNELS, CHANNELS, [3, 5, 7], "static", groups=CHANNELS, routings=["static", "soft", "hard"])
    layer.set_active([5], routing="soft")
    assert layer.active_experts == (Expert(5),) and layer.routing == "soft" and layer.kernel_size == 5
    layer.set_active([3, 7], routing="hard", top_k=2)
    x = torch.randn(2, CHANNELS, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(layer.eval()(x), reference_forward(layer, x), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="experts: 9 not among"):
        layer.set_active([9])
    with pytest.raises(ValueError, match="top_k"):
        layer.set_active([5], routing="hard", top_k=2)
    static_only = MoRFConv2d(CHANNELS, CHANNELS, [3, 5], "static")
    assert static_only.router is None
    with pytest.raises(ValueError, match="routing"):
        static_only.set_active(routing="soft")


@pytest.mark.parametrize("kwargs,field", [
    (dict(kernel_sizes=[3, 4]), "kernel_sizes"),
    (dict(kernel_sizes=[]), "kernel_sizes"),
    (dict(kernel_sizes=[-3]), "kernel_sizes"),
    (dict(kernel_sizes=["3d0"]), "kernel_sizes"),
    (dict(kernel_sizes=[3, 5], routing="sparse"), "routing"),
    (dict(kernel_sizes=[3, 5], routing="hard", top_k=3), "top_k"),
    (dict(kernel_sizes=[3, 5], groups=3), "groups"),
])
def test_bad_arguments_raise_value_error_naming_the_argument(kwargs, field):
    with pytest.raises(ValueError, match=rf"^{field}: "):
        MoRFConv2d(CHANNELS, CHANNELS, **kwargs)
