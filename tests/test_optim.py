"""LARS equals a hand computation; parameter groups; the warm-up + cosine schedule."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from pixpro_of.optim import LARS, build_lr_scheduler, lr_at, param_groups
from plumbing.errors import UserError


def test_lars_two_steps_equal_a_hand_computation():
    w0 = np.array([[1.0, 2.0], [3.0, 4.0]])
    b0 = np.array([0.5, -0.5])
    gw = [np.array([[0.1, -0.2], [0.3, 0.0]]), np.array([[0.0, 0.4], [-0.1, 0.2]])]
    gb = [np.array([1.0, 2.0]), np.array([-1.0, 0.5])]
    lr, wd, mom, trust = 0.1, 0.01, 0.9, 0.001
    W = nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    B = nn.Parameter(torch.tensor(b0, dtype=torch.float64))
    opt = LARS(
        [
            {"params": [W], "weight_decay": wd, "lars_exclude": False},
            {"params": [B], "weight_decay": 0.0, "lars_exclude": True},
        ],
        lr=lr,
        momentum=mom,
    )
    w, b = w0.copy(), b0.copy()
    buf_w = buf_b = None
    for step in range(2):
        W.grad = torch.tensor(gw[step], dtype=torch.float64)
        B.grad = torch.tensor(gb[step], dtype=torch.float64)
        opt.step()
        # by hand: weight decay, then trust ratio, then SGD momentum
        d = gw[step] + wd * w
        d = d * trust * np.linalg.norm(w) / (np.linalg.norm(d) + 1e-8)
        buf_w = d if buf_w is None else mom * buf_w + d
        w = w - lr * buf_w
        buf_b = gb[step] if buf_b is None else mom * buf_b + gb[step]  # excluded: plain SGD
        b = b - lr * buf_b
        np.testing.assert_allclose(W.detach().numpy(), w, rtol=1e-12)
        np.testing.assert_allclose(B.detach().numpy(), b, rtol=1e-12)
    # gradients are not modified by the step
    np.testing.assert_array_equal(W.grad.numpy(), gw[1])


def test_lars_leaves_zero_norm_parameters_unscaled_and_round_trips_state():
    P = nn.Parameter(torch.zeros(3, 3))
    opt = LARS([{"params": [P], "weight_decay": 0.0, "lars_exclude": False}], lr=1.0, momentum=0.9)
    P.grad = torch.ones(3, 3)
    opt.step()
    assert torch.allclose(P, -torch.ones(3, 3))  # ||p|| = 0: adaptive factor 1, as the seed
    # state_dict round-trip: a fresh optimizer continues identically
    Q = nn.Parameter(P.detach().clone())
    opt2 = LARS([{"params": [Q], "weight_decay": 0.0, "lars_exclude": False}], lr=1.0, momentum=0.9)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # as if read from a checkpoint file
    for o, p in ((opt, P), (opt2, Q)):
        p.grad = torch.full((3, 3), 0.5)
        o.step()
    assert torch.equal(P, Q)


def test_param_groups_exclude_biases_and_bn():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1, bias=False))
    groups = param_groups([net], weight_decay=1e-5)
    decay = {id(p) for p in groups[0]["params"]}
    skip = {id(p) for p in groups[1]["params"]}
    assert decay == {id(net[0].weight), id(net[2].weight)}
    assert skip == {id(net[0].bias), id(net[1].weight), id(net[1].bias)}
    assert groups[0]["weight_decay"] == 1e-5 and not groups[0]["lars_exclude"]
    assert groups[1]["weight_decay"] == 0.0 and groups[1]["lars_exclude"]
    # shared modules are listed once
    assert sum(len(g["params"]) for g in param_groups([net, net[0]], 1e-5)) == 5


def test_schedule_warmup_then_cosine():
    base, warm, total = 4.0, 10, 110
    assert lr_at(0, base, warm, total) == pytest.approx(0.04)
    assert lr_at(5, base, warm, total) == pytest.approx(0.04 * (99 * 0.5 + 1))
    assert lr_at(10, base, warm, total) == pytest.approx(4.0)
    assert lr_at(60, base, warm, total) == pytest.approx(1e-6 + (4.0 - 1e-6) * 0.5)
    assert lr_at(110, base, warm, total) == pytest.approx(1e-6)
    assert lr_at(500, base, warm, total) == pytest.approx(1e-6)
    opt = LARS(param_groups([nn.Linear(2, 2)], 0.0), lr=123.0)
    sched = build_lr_scheduler(opt, base, warm, total)
    seen = []
    for _ in range(total + 2):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    np.testing.assert_allclose(seen, [lr_at(i, base, warm, total) for i in range(total + 2)], rtol=1e-12)
    # state round-trip at an arbitrary point continues on the same curve
    opt2 = LARS(param_groups([nn.Linear(2, 2)], 0.0), lr=1.0)
    sched2 = build_lr_scheduler(opt2, base, warm, total)
    sched2.load_state_dict(sched.state_dict())
    assert sched2.last_epoch == total + 2
    assert sched2.get_last_lr()[0] == pytest.approx(lr_at(total + 2, base, warm, total))


def test_schedule_bad_settings_are_user_errors():
    opt = LARS(param_groups([nn.Linear(2, 2)], 0.0), lr=1.0)
    with pytest.raises(UserError, match=r"total iterations \(5\) must exceed warm-up iterations \(10\)"):
        build_lr_scheduler(opt, 1.0, 10, 5)
    with pytest.raises(UserError, match="learning rate must be >= 0"):
        build_lr_scheduler(opt, -1.0, 1, 5)
    with pytest.raises(UserError, match=r"eta_min must be in \[0, learning rate 0.0\) \(0 when the rate is 0\)"):
        build_lr_scheduler(opt, 0.0, 1, 5, eta_min=1e-6)


def test_a_zero_rate_moves_no_weight_and_only_batchnorm_statistics():
    """base lr 0 (eta_min 0): every step's rate is exactly 0, so LARS leaves every weight as it was
    (momentum and weight decay included), while BatchNorm's running statistics follow the data."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    net(torch.randn(2, 3, 6, 6))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = LARS(param_groups([net], 1e-5), lr=1.0, momentum=0.9)
    sched = build_lr_scheduler(opt, 0.0, 2, 10, eta_min=0.0)
    for _ in range(6):
        loss = net(torch.randn(4, 3, 6, 6) * 3 + 2).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        assert opt.param_groups[0]["lr"] == 0.0
    after = net.state_dict()
    for k, v in before.items():
        if "running" in k or "num_batches" in k:
            continue
        assert torch.equal(after[k], v), k
    assert not torch.equal(after["1.running_mean"], before["1.running_mean"])
    assert int(after["1.num_batches_tracked"]) == int(before["1.num_batches_tracked"]) + 6
