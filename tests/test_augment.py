"""BYOL view augmentations: all randomness from the passed generator; geometry matches the boxes."""

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from pixpro_of.data.augment import (
    BYOL_VIEW1,
    BYOL_VIEW2,
    ViewParams,
    adjust_hue,
    apply_view,
    apply_view_reference,
    draw_view_params,
    gaussian_blur,
    sample_crop,
    to_normalized_float,
)
from pixpro_of.positives import cell_centres

torch.set_num_threads(1)


def _frame(h=90, w=160, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).permute(2, 0, 1)


def _views(seed):
    rng = np.random.default_rng(seed)
    f = _frame()
    out = []
    for aug in (BYOL_VIEW1, BYOL_VIEW2):
        p = draw_view_params(rng, (90, 160), aug)
        out.append((p, apply_view(f, p, 48)))
    return out


def test_views_are_a_function_of_the_generator_only():
    torch.manual_seed(1)
    np.random.seed(1)
    a = _views(7)
    torch.manual_seed(2)
    np.random.seed(2)
    import random

    random.seed(2)
    b = _views(7)
    for (pa, va), (pb, vb) in zip(a, b):
        assert pa == pb
        assert torch.equal(va, vb)
    c = _views(8)
    assert any(pa != pc for (pa, _), (pc, _) in zip(a, c))


def test_global_rng_state_is_not_consumed():
    np.random.seed(3)
    torch.manual_seed(3)
    before_np = np.random.get_state()[1].copy()
    before_torch = torch.get_rng_state().clone()
    _views(5)
    assert np.array_equal(np.random.get_state()[1], before_np)
    assert torch.equal(torch.get_rng_state(), before_torch)


def test_crop_boxes_lie_inside_the_frame_and_follow_the_scale_range():
    rng = np.random.default_rng(0)
    areas = []
    for _ in range(500):
        left, top, w, h = sample_crop(rng, 720, 1280)
        assert 0 <= left and 0 <= top and left + w <= 1280 and top + h <= 720 and w > 0 and h > 0
        areas.append(w * h / (720 * 1280))
    assert 0.07 < min(areas) < 0.15 and 0.7 < max(areas) <= 0.76  # ratio <= 4/3 on 16:9: at most 960x720
    # impossible ratios fall back to the centre crop with the ratio clamped (torchvision's rule)
    assert sample_crop(np.random.default_rng(0), 100, 1000, scale=(0.99, 1.0), ratio=(1.0, 1.0)) == (450, 0, 100, 100)


def test_view_pixels_come_from_the_box_and_flip_like_the_positive_cells():
    """A frame whose pixels encode their own coordinates: each view cell shows the frame position
    that pixpro_of.positives assigns to that cell (within a pixel), flipped or not."""
    H, W, S, Fg = 120, 200, 70, 7
    ys, xs = np.mgrid[0:H, 0:W]
    frame = torch.from_numpy(np.stack([xs, ys, np.zeros_like(xs)], 0).astype(np.uint8))
    for flip in (False, True):
        p = ViewParams(box=(30, 20, 140, 91), flip=flip, jitter=None, grayscale=False, blur_sigma=None, solarize=False)
        view = apply_view(frame, p, S).float()
        cells = cell_centres(torch.tensor([p.box], dtype=torch.float64), torch.tensor([flip]), Fg)[0]
        for i in range(Fg * Fg):
            v, u = divmod(i, Fg)
            cx = (u + 0.5) * S / Fg - 0.5
            cy = (v + 0.5) * S / Fg - 0.5
            x_here = view[0, int(round(cy)), int(round(cx))].item()
            y_here = view[1, int(round(cy)), int(round(cx))].item()
            assert abs(x_here - cells[i, 0].item()) < 2.0
            assert abs(y_here - cells[i, 1].item()) < 2.0


def test_colour_operations_are_applied_as_drawn():
    f = _frame()
    base = ViewParams(box=(0, 0, 160, 90), flip=False, jitter=None, grayscale=False, blur_sigma=None, solarize=False)
    plain = apply_view(f, base, 32)
    gray = apply_view(f, ViewParams(**{**base.__dict__, "grayscale": True}), 32)
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    sol = apply_view(f, ViewParams(**{**base.__dict__, "solarize": True}), 32)
    assert torch.equal(sol, torch.where(plain >= 128, 255 - plain, plain))
    jit = apply_view(f, ViewParams(**{**base.__dict__, "jitter": ((1, 0, 3, 2), 1.3, 0.7, 1.1, 0.05)}), 32)
    want = TF.adjust_saturation(TF.adjust_hue(TF.adjust_brightness(TF.adjust_contrast(plain, 0.7), 1.3), 0.05), 1.1)
    assert (jit.int() - want.int()).abs().max() <= 2  # the CPU hue path is OpenCV's (within 1 level)
    assert (jit.int() - want.int()).abs().float().mean() < 0.2
    x = to_normalized_float(plain)
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32) and -2.2 < x.min() and x.max() < 2.7


def test_hue_paths_agree():
    img = _frame(64, 64)
    for hue in (-0.1, 0.03, 0.1):
        a = adjust_hue(img, hue, use_cv2=True)
        b = adjust_hue(img, hue, use_cv2=False)
        assert (a.int() - b.int()).abs().max() <= 1
        assert not torch.equal(a, img)


def test_blur_paths_agree_and_match_torchvision():
    img = _frame(64, 64)
    for sigma in (0.3, 1.0, 2.0):
        a = gaussian_blur(img, sigma, use_cv2=True)
        b = gaussian_blur(img, sigma, use_cv2=False)
        r = int(np.ceil(3 * sigma))
        ref = TF.gaussian_blur(img, [2 * r + 1, 2 * r + 1], [sigma, sigma])
        assert (a.int() - b.int()).abs().max() <= 1
        assert (a.int() - ref.int()).abs().max() <= 1
    assert gaussian_blur(img, 2.0).float().std() < img.float().std() * 0.6


def test_view2_solarizes_and_view1_always_blurs():
    rng = np.random.default_rng(0)
    p1 = [draw_view_params(rng, (90, 160), BYOL_VIEW1) for _ in range(400)]
    p2 = [draw_view_params(rng, (90, 160), BYOL_VIEW2) for _ in range(400)]
    assert all(p.blur_sigma is not None and 0.1 <= p.blur_sigma <= 2.0 for p in p1)
    assert not any(p.solarize for p in p1)
    assert 0.05 < np.mean([p.blur_sigma is not None for p in p2]) < 0.16
    assert 0.14 < np.mean([p.solarize for p in p2]) < 0.27
    assert 0.74 < np.mean([p.jitter is not None for p in p1]) < 0.86
    assert 0.14 < np.mean([p.grayscale for p in p1]) < 0.27
    assert 0.43 < np.mean([p.flip for p in p1]) < 0.57


def test_cpu_fast_path_gives_the_reference_bytes():
    """apply_view on CPU (crop first, LUTs, OpenCV) equals the one-op-per-step reference exactly,
    for every operation, in every jitter order, on sizes with and without vector tails."""
    rng = np.random.default_rng(11)
    frames = [_frame(90, 160, seed=1), _frame(61, 83, seed=2)]
    checked = changed = 0
    for i in range(120):
        f = frames[i % 2]
        hw = tuple(f.shape[1:])
        p = draw_view_params(rng, hw, BYOL_VIEW2 if i % 3 else BYOL_VIEW1)
        if i % 4 == 0:  # every op at once, random order and factors
            order = tuple(int(j) for j in rng.permutation(4))
            p = ViewParams(
                box=p.box,
                flip=p.flip,
                grayscale=bool(i % 8 == 0),
                blur_sigma=float(rng.uniform(0.1, 2.0)),
                solarize=True,
                jitter=(
                    order,
                    float(rng.uniform(0.6, 1.4)),
                    float(rng.uniform(0.6, 1.4)),
                    float(rng.uniform(0.8, 1.2)),
                    float(rng.uniform(-0.1, 0.1)),
                ),
            )
        size = int(rng.choice([32, 37, 48]))
        fast = apply_view(f, p, size)
        ref = apply_view_reference(f, p, size)
        assert fast.dtype == torch.uint8 and fast.shape == (3, size, size)
        assert torch.equal(fast, ref), (i, p)
        checked += 1
        changed += int(p.jitter is not None or p.blur_sigma is not None or p.solarize)
    assert checked == 120 and changed > 80


def test_fast_hue_wraps_like_np_mod():
    """Hue rotations that cross 0 and 360 degrees (both signs, up to the 0.1-turn jitter bound)."""
    img = _frame(40, 40, seed=5)
    for hue in (-0.1, -0.05, -1e-3, 1e-3, 0.05, 0.1, 0.5, -0.5):
        p = ViewParams(
            box=(0, 0, 40, 40),
            flip=False,
            jitter=((3, 0, 1, 2), 1.0, 1.0, 1.0, hue),
            grayscale=False,
            blur_sigma=None,
            solarize=False,
        )
        assert torch.equal(apply_view(img, p, 40), apply_view_reference(img, p, 40)), hue


def test_cpu_fast_path_gives_the_reference_bytes_on_large_frames_in_both_layouts():
    """720p frames at 224 px (the training sizes: crops much larger than the view, antialiased),
    given as an interleaved-strided [3, H, W] view of an [H, W, 3] array (the decoder's output) and
    as a contiguous planar tensor; a crop of exactly the view size (no resize) and every layout
    change of the fast path (hue on interleaved pixels, saturation / contrast / grayscale on planes)."""
    rng = np.random.default_rng(21)
    hwc = _frame(720, 1280, seed=3)
    frames = (hwc, hwc.contiguous())
    assert not hwc.is_contiguous() and frames[1].is_contiguous()
    for i in range(16):
        p = draw_view_params(rng, (720, 1280), BYOL_VIEW1 if i % 2 else BYOL_VIEW2)
        order = tuple(int(j) for j in rng.permutation(4))
        jitter = (
            order,
            float(rng.uniform(0.6, 1.4)),
            float(rng.uniform(0.6, 1.4)),
            float(rng.uniform(0.8, 1.2)),
            float(rng.uniform(-0.1, 0.1)),
        )
        box = (int(rng.integers(0, 1000)), int(rng.integers(0, 490)), 224, 224) if i % 4 == 3 else p.box
        p = ViewParams(
            box=box,
            flip=bool(i % 3 == 0),
            jitter=jitter if i % 4 else p.jitter,
            grayscale=bool(i % 5 == 0),
            blur_sigma=p.blur_sigma if i % 2 else float(rng.uniform(0.1, 2.0)),
            solarize=bool(i % 3 == 1),
        )
        for f in frames:
            fast = apply_view(f, p, 224)
            assert fast.is_contiguous() and fast.shape == (3, 224, 224)
            assert torch.equal(fast, apply_view_reference(f, p, 224)), (i, p)
    # the view never shares memory with the frame (a full-size crop without any operation)
    f = _frame(40, 40, seed=4)
    p = ViewParams(box=(0, 0, 40, 40), flip=False, jitter=None, grayscale=False, blur_sigma=None, solarize=False)
    v = apply_view(f, p, 40)
    assert torch.equal(v, f) and v.data_ptr() != f.data_ptr()
    v[0, 0, 0] = 255 - int(v[0, 0, 0])
    assert not torch.equal(v, f)


def test_normalisation_lookup_gives_the_formula_bits():
    """to_normalized_float's per-channel table path (contiguous CPU [3, S, S]) equals
    ((x / 255) − mean) / std computed in float32, bit for bit; other inputs take the formula."""
    g = torch.Generator().manual_seed(0)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    for img in (
        torch.randint(0, 256, (3, 224, 224), dtype=torch.uint8, generator=g),
        torch.arange(256, dtype=torch.uint8).repeat(3, 3, 1),
        torch.randint(0, 256, (3, 37, 37), dtype=torch.uint8, generator=g).permute(0, 2, 1),
        torch.randint(0, 256, (2, 3, 5, 5), dtype=torch.uint8, generator=g),
    ):
        want = ((img.to(torch.float32) / 255.0) - mean) / std
        got = to_normalized_float(img)
        assert got.dtype == torch.float32 and got.shape == img.shape
        assert torch.equal(got, want)
