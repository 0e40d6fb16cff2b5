"""PixPro model and loss: −4 at perfect agreement, the momentum branch, shapes and init."""

import math

import pytest
import torch
import torch.nn.functional as F

from pixpro_of.losses import pixpro_loss
from pixpro_of.model import ModelConfig, PixPro, momentum_at
from pixpro_of.model.encoder import build_encoder, c5_size
from plumbing.errors import UserError

torch.set_num_threads(1)
SMALL = dict(arch="resnet18", proj_hidden=64, proj_dim=32)


def _perfect_case(b=3, c=16, f=4, seed=0):
    """pred and a target that equals pred at every positive pair (a random permutation)."""
    g = torch.Generator().manual_seed(seed)
    pred = F.normalize(torch.randn(b, c, f, f, generator=g), dim=1)
    n = f * f
    perm = torch.stack([torch.randperm(n, generator=g) for _ in range(b)])  # target cell j = pred cell perm[j]
    target = torch.stack([pred[i].flatten(1)[:, perm[i]] for i in range(b)]).view(b, c, f, f)
    pos = torch.zeros(b, n, n, dtype=torch.bool)
    for i in range(b):
        pos[i, perm[i], torch.arange(n)] = True
    return pred, target, pos


@pytest.mark.parametrize("norm", ["seed", "pixel"])
def test_loss_is_minus_four_when_predictions_equal_targets(norm):
    p1, t2, pos12 = _perfect_case(seed=1)
    p2, t1, pos21 = _perfect_case(seed=2)
    l1, n1 = pixpro_loss(p1, t2, pos12, norm)
    l2, _ = pixpro_loss(p2, t1, pos21, norm)
    assert (l1 + l2).item() == pytest.approx(-4.0, abs=1e-5)
    assert n1.tolist() == [16.0, 16.0, 16.0]
    # anti-aligned targets give the other end of the range
    l1, _ = pixpro_loss(p1, -t2, pos12, norm)
    assert l1.item() == pytest.approx(2.0, abs=1e-5)


def test_seed_and_pixel_normalisations_differ_as_specified():
    # one image, 2x2 cells; cos matrix chosen by hand through 1-D features
    q = torch.tensor([1.0, 1.0, -1.0, 1.0]).view(1, 1, 2, 2)
    k = torch.tensor([1.0, -1.0, 1.0, 1.0]).view(1, 1, 2, 2)
    pos = torch.zeros(1, 4, 4, dtype=torch.bool)
    pos[0, 0, 0] = pos[0, 0, 1] = pos[0, 0, 2] = True  # cell 0: cos +1, -1, +1  -> mean 1/3
    pos[0, 1, 3] = True  # cell 1: cos +1 -> mean 1
    seed, pairs = pixpro_loss(q, k, pos, "seed")
    pixel, _ = pixpro_loss(q, k, pos, "pixel")
    assert pairs.tolist() == [4.0]
    assert seed.item() == pytest.approx(-2 * (1 - 1 + 1 + 1) / (4 + 1e-6), rel=1e-6)
    assert pixel.item() == pytest.approx(-2 * (1 / 3 + 1) / 2, rel=1e-6)
    # an image with no positives adds 0 (and no NaN)
    empty, _ = pixpro_loss(q, k, torch.zeros_like(pos), "pixel")
    assert empty.item() == 0.0


def test_loss_shape_errors_are_exact():
    p, t, pos = _perfect_case()
    with pytest.raises(ValueError, match=r"pos should have shape \[B, HW, HW\] = \(3, 16, 16\), got \(3, 16, 15\)"):
        pixpro_loss(p, t, pos[..., :15])


def test_momentum_schedule():
    assert momentum_at(0, 100) == pytest.approx(0.99)
    assert momentum_at(50, 100) == pytest.approx(0.995)
    assert momentum_at(100, 100) == pytest.approx(1.0)
    assert momentum_at(250, 100) == pytest.approx(1.0)
    assert momentum_at(25, 100, base=0.9) == pytest.approx(1 - 0.1 * (math.cos(math.pi / 4) + 1) / 2)


def test_momentum_branch_holds_the_averaged_weights():
    torch.manual_seed(0)
    model = PixPro(ModelConfig(**SMALL))
    k_before = [p.detach().clone() for p in list(model.encoder_k.parameters()) + list(model.projector_k.parameters())]
    assert all(not p.requires_grad for p in model.encoder_k.parameters())
    # move the online weights away from the copies
    with torch.no_grad():
        for p in list(model.encoder.parameters()) + list(model.projector.parameters()):
            p.add_(torch.randn_like(p))
    online = [p.detach().clone() for p in list(model.encoder.parameters()) + list(model.projector.parameters())]
    bn_k_before = model.encoder_k.bn1.running_mean.clone()
    with torch.no_grad():
        model.encoder.bn1.running_mean.add_(5.0)
    model.momentum_update(0.9)
    after = list(model.encoder_k.parameters()) + list(model.projector_k.parameters())
    for kb, q, ka in zip(k_before, online, after):
        torch.testing.assert_close(ka, 0.9 * kb + 0.1 * q)
        if not torch.equal(kb, q):
            assert not torch.allclose(ka, q)
    # BN buffers of the momentum branch are its own (seed behaviour), not copies of the online ones
    assert torch.equal(model.encoder_k.bn1.running_mean, bn_k_before)
    # m = 1 leaves the momentum branch unchanged; m = 0 copies the online weights
    snap = [p.clone() for p in after]
    model.momentum_update(1.0)
    assert all(torch.equal(a, b) for a, b in zip(after, snap))
    model.momentum_update(0.0)
    assert all(torch.equal(a, q) for a, q in zip(after, online))


def test_forward_loss_is_the_sum_of_both_directions_and_gradients_reach_only_the_online_branch():
    torch.manual_seed(0)
    model = PixPro(ModelConfig(**SMALL))
    S = 64
    f = model.feature_size(S)
    assert f == 2
    v1, v2 = torch.randn(2, 3, S, S), torch.randn(2, 3, S, S)
    pos12 = torch.rand(2, f * f, f * f) < 0.5
    pos21 = torch.rand(2, f * f, f * f) < 0.5
    loss, metrics = model(v1, v2, pos12, pos21)
    assert loss.item() == pytest.approx((metrics["loss/1"] + metrics["loss/2"]).item(), abs=1e-6)
    assert metrics["positive_pair/num/1"].item() == pos12.sum().item()
    assert metrics["positive_pair/avg/2"].item() == pytest.approx(pos21.sum().item() / 2)
    # the same forward, recomputed by hand from the submodules (BN in train mode, per view)
    model2 = PixPro(ModelConfig(**SMALL))
    model2.load_state_dict(model.state_dict())
    p1 = F.normalize(model2.ppm(model2.projector(model2.encoder(v1))), dim=1)
    t2 = F.normalize(model2.projector_k(model2.encoder_k(v2)), dim=1)
    p2 = F.normalize(model2.ppm(model2.projector(model2.encoder(v2))), dim=1)
    t1 = F.normalize(model2.projector_k(model2.encoder_k(v1)), dim=1)
    want = pixpro_loss(p1, t2, pos12)[0] + pixpro_loss(p2, t1, pos21)[0]
    assert loss.item() == pytest.approx(want.item(), abs=1e-5)
    loss.backward()
    assert all(p.grad is None for p in model.encoder_k.parameters())
    assert model.encoder.conv1.weight.grad is not None and model.ppm.value_transform.weight.grad is not None
    names = {id(p) for m in model.online_modules() for p in m.parameters()}
    assert all(id(p) not in names for p in model.encoder_k.parameters())


def test_forward_rejects_mismatched_positive_shapes():
    model = PixPro(ModelConfig(**SMALL))
    v = torch.randn(1, 3, 64, 64)
    pos = torch.ones(1, 49, 49, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"pos12 should have shape \[B, F\*F, F\*F\] = \(1, 4, 4\) for 64px views"):
        model(v, v, pos, pos)


def test_encoder_shapes_and_seed_init():
    assert c5_size(224) == 7 and c5_size(64) == 2 and c5_size(96) == 3
    enc = build_encoder("resnet50")
    assert enc.out_channels == 2048
    for block in list(enc.layer1) + list(enc.layer4):
        assert torch.count_nonzero(block.bn3.weight) == 0  # zero-init of each bottleneck's last BN
        assert torch.all(block.bn1.weight == 1)
    w = enc.layer3[0].conv2.weight  # 3x3, 256 out: std sqrt(2 / (9 * 256))
    assert w.std().item() == pytest.approx(math.sqrt(2 / (9 * 256)), rel=0.05)
    with torch.no_grad():
        out = build_encoder("resnet18")(torch.randn(1, 3, 96, 96))
    assert out.shape == (1, 512, 3, 3)


def test_bad_model_config_is_a_one_line_user_error():
    with pytest.raises(
        UserError, match=r"config: model.arch must be one of resnet18, resnet34, resnet50 \(got 'vgg'\)"
    ):
        PixPro(ModelConfig(arch="vgg"))
    with pytest.raises(UserError, match="model.loss_norm"):
        ModelConfig(loss_norm="mean").validate()
    with pytest.raises(UserError, match="model.momentum_base"):
        ModelConfig(momentum_base=1.5).validate()


def test_pointwise_conv_equals_a_1x1_convolution():
    from pixpro_of.model.heads import Conv1x1

    torch.manual_seed(0)
    fast = Conv1x1(6, 5)
    ref = torch.nn.Conv2d(6, 5, kernel_size=1)
    ref.load_state_dict(fast.state_dict())
    assert list(fast.state_dict()) == ["weight", "bias"] and fast.weight.shape == (5, 6, 1, 1)
    x = torch.randn(2, 6, 3, 4)
    torch.testing.assert_close(fast(x), ref(x))
    torch.testing.assert_close(fast(x.to(memory_format=torch.channels_last)), ref(x))


@pytest.mark.parametrize("path", ["onednn", "linear"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("bias", [True, False])
def test_conv1x1_matches_conv2d_forward_and_backward_on_both_cpu_paths(monkeypatch, path, layout, bias):
    """Both CPU code paths of Conv1x1 (oneDNN matmul, and the F.linear fallback used where oneDNN is
    missing and on CUDA) give F.conv2d's output and the gradients of input, weight and bias."""
    from pixpro_of.model import heads

    if path == "onednn" and heads._onednn_linear() is None:
        pytest.skip("this PyTorch build has no oneDNN linear")
    if path == "linear":
        monkeypatch.setattr(heads, "_LINEAR_POINTWISE", None)
    torch.manual_seed(1)
    conv = heads.Conv1x1(48, 80, bias=bias)
    x = torch.randn(3, 48, 7, 5)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    grad_out = torch.randn(3, 80, 7, 5)
    x1 = x.clone().requires_grad_()
    y = conv(x1)
    assert type(y.grad_fn).__name__.startswith("PermuteBackward")
    inner = y.grad_fn.next_functions[0][0].next_functions[0][0]  # permute <- view <- the product
    assert ("OneDNN" in type(inner).__name__) == (path == "onednn")
    y.backward(grad_out)
    x2 = x.clone().requires_grad_()
    w2 = conv.weight.detach().clone().requires_grad_()
    b2 = conv.bias.detach().clone().requires_grad_() if bias else None
    want = F.conv2d(x2, w2, b2)
    want.backward(grad_out)
    torch.testing.assert_close(y, want)
    torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(conv.weight.grad, w2.grad)
    if bias:
        torch.testing.assert_close(conv.bias.grad, b2.grad)
    # no gradient asked for (the momentum branch): the same output
    with torch.no_grad():
        torch.testing.assert_close(conv(x), want.detach())


def test_projector_on_the_onednn_path_matches_the_reference_formula():
    """The whole projector (conv1x1 → BN → ReLU → conv1x1) against F.conv2d / F.batch_norm, with
    gradients, at the real C5 map size (7×7) and channel counts that use the oneDNN kernels."""
    from pixpro_of.model.heads import Projector

    torch.manual_seed(2)
    proj = Projector(64, 256, 32).train()
    x = torch.randn(4, 64, 7, 7)
    grad_out = torch.randn(4, 32, 7, 7)
    x1 = x.clone().requires_grad_()
    proj(x1).backward(grad_out)
    x2 = x.clone().requires_grad_()
    params = {n: p.detach().clone().requires_grad_() for n, p in proj.named_parameters()}
    h = F.conv2d(x2, params["linear1.weight"], params["linear1.bias"])
    h = F.relu(F.batch_norm(h, None, None, params["bn1.weight"], params["bn1.bias"], training=True, eps=proj.bn1.eps))
    want = F.conv2d(h, params["linear2.weight"], params["linear2.bias"])
    want.backward(grad_out)
    torch.testing.assert_close(proj(x), want.detach())
    torch.testing.assert_close(x1.grad, x2.grad)
    for n, p in proj.named_parameters():
        torch.testing.assert_close(p.grad, params[n].grad, msg=n)


@pytest.mark.parametrize("m", [0.99, 0.996, 0.5, 0.123])
def test_momentum_update_is_the_ema_formula(m):
    torch.manual_seed(3)
    model = PixPro(ModelConfig(**SMALL))
    with torch.no_grad():
        for p in list(model.encoder.parameters()) + list(model.projector.parameters()):
            p.add_(torch.randn_like(p))
        for p in list(model.encoder_k.parameters()) + list(model.projector_k.parameters()):
            p.mul_(0.5).sub_(torch.rand_like(p))
    k_params = list(model.encoder_k.parameters()) + list(model.projector_k.parameters())
    q_params = list(model.encoder.parameters()) + list(model.projector.parameters())
    want = [m * pk.detach().clone() + (1 - m) * pq.detach() for pk, pq in zip(k_params, q_params)]
    model.momentum_update(m)
    assert len(k_params) == len(want) > 0
    for got, w in zip(k_params, want):
        torch.testing.assert_close(got, w, rtol=1e-6, atol=1e-6)
        assert not got.requires_grad
    assert all(p.grad is None for p in q_params)  # the online branch is read, not touched


def test_channels_last_and_bf16_autocast_give_the_same_loss():
    torch.manual_seed(0)
    model = PixPro(ModelConfig(**SMALL))
    v1, v2 = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    pos = torch.rand(2, 4, 4) < 0.5
    ref, _ = model(v1, v2, pos, pos)
    cl = PixPro(ModelConfig(**SMALL)).to(memory_format=torch.channels_last)
    cl.load_state_dict(model.state_dict())
    got, _ = cl(v1.to(memory_format=torch.channels_last), v2.to(memory_format=torch.channels_last), pos, pos)
    assert got.item() == pytest.approx(ref.item(), abs=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, _ = cl(v1, v2, pos, pos)
    assert low.dtype == torch.float32  # the loss is computed in float32
    assert low.item() == pytest.approx(ref.item(), abs=0.05)
    low.backward()
    assert cl.encoder.conv1.weight.grad is not None
