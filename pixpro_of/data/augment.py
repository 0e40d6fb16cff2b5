"""The seed's two BYOL view augmentations (docs/original-system.md §2.4), with the crop box and flip kept."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ViewAugment:
    """Probabilities and ranges of one view's pipeline (defaults: the seed's view 1)."""

    jitter: Tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 1.0
    blur_sigma: Tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    flip_p: float = 0.5


BYOL_VIEW1 = ViewAugment(blur_p=1.0, solarize_p=0.0)
BYOL_VIEW2 = ViewAugment(blur_p=0.1, solarize_p=0.2)


@dataclass
class ViewParams:
    """Every random choice of one view. ``box`` = (left, top, width, height) in frame pixels."""

    box: Tuple[int, int, int, int]
    flip: bool
    jitter: Optional[Tuple[Tuple[int, ...], float, float, float, float]]  # (order, b, c, s, h) or None
    grayscale: bool
    blur_sigma: Optional[float]
    solarize: bool


def sample_crop(
    rng: np.random.Generator,
    height: int,
    width: int,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
) -> Tuple[int, int, int, int]:
    """RandomResizedCrop box ``(left, top, w, h)``: torchvision's algorithm, drawn from ``rng``."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def draw_view_params(
    rng: np.random.Generator,
    frame_hw: Tuple[int, int],
    aug: ViewAugment,
    crop_scale: Sequence[float] = (0.08, 1.0),
    crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
) -> ViewParams:
    """All random choices of one view, drawn from ``rng`` in pipeline order."""
    height, width = frame_hw
    box = sample_crop(rng, height, width, crop_scale, crop_ratio)
    flip = bool(rng.random() < aug.flip_p)
    jitter = None
    if rng.random() < aug.jitter_p:
        b, c, s, h = aug.jitter
        order = tuple(int(i) for i in rng.permutation(4))
        jitter = (
            order,
            float(rng.uniform(max(0.0, 1 - b), 1 + b)),
            float(rng.uniform(max(0.0, 1 - c), 1 + c)),
            float(rng.uniform(max(0.0, 1 - s), 1 + s)),
            float(rng.uniform(-h, h)),
        )
    grayscale = bool(rng.random() < aug.grayscale_p)
    blur_sigma = float(rng.uniform(*aug.blur_sigma)) if rng.random() < aug.blur_p else None
    solarize = bool(rng.random() < aug.solarize_p)
    return ViewParams(box=box, flip=flip, jitter=jitter, grayscale=grayscale, blur_sigma=blur_sigma, solarize=solarize)


def apply_view(frame: torch.Tensor, params: ViewParams, size: int) -> torch.Tensor:
    """Apply ``params`` to a uint8 ``[3, H, W]`` RGB frame; returns uint8 ``[3, size, size]``.

    On CPU tensors this runs the fast path (:func:`_apply_view_cpu`: the crop is resized first,
    then every colour operation works on the ``size``×``size`` crop with uint8 look-up tables and
    OpenCV), which gives the same bytes as :func:`apply_view_reference` on CPU (tested); on other
    devices it is :func:`apply_view_reference` (torchvision tensor ops).
    """
    if frame.ndim != 3 or frame.shape[0] != 3 or frame.dtype != torch.uint8:
        raise ValueError(f"frame should be a uint8 tensor [3, H, W], got {frame.dtype} {tuple(frame.shape)}")
    if frame.device.type == "cpu":
        return _apply_view_cpu(frame, params, size)
    return apply_view_reference(frame, params, size)


def apply_view_reference(frame: torch.Tensor, params: ViewParams, size: int) -> torch.Tensor:
    """The plain implementation of :func:`apply_view`: one torchvision op per step (hue and blur
    through OpenCV on CPU tensors, see :func:`adjust_hue` / :func:`gaussian_blur`). Used on non-CPU
    devices, and as the reference the CPU fast path is tested against."""
    if frame.ndim != 3 or frame.shape[0] != 3 or frame.dtype != torch.uint8:
        raise ValueError(f"frame should be a uint8 tensor [3, H, W], got {frame.dtype} {tuple(frame.shape)}")
    left, top, w, h = params.box
    img = TF.resized_crop(frame, top, left, h, w, [size, size], antialias=True)
    if params.flip:
        img = TF.horizontal_flip(img)
    if params.jitter is not None:
        order, b, c, s, hue = params.jitter
        for op in order:
            if op == 0:
                img = TF.adjust_brightness(img, b)
            elif op == 1:
                img = TF.adjust_contrast(img, c)
            elif op == 2:
                img = TF.adjust_saturation(img, s)
            else:
                img = adjust_hue(img, hue)
    if params.grayscale:
        img = TF.rgb_to_grayscale(img, num_output_channels=3)
    if params.blur_sigma is not None:
        img = gaussian_blur(img, params.blur_sigma)
    if params.solarize:
        img = torch.where(img >= 128, 255 - img, img)  # PIL ImageOps.solarize(threshold=128)
    return img


# ------------------------------------------------------------------ CPU fast path
# uint8 ramp 0..255 as a [1, 1, 256] image: per-value look-up tables are built by running the very
# torch op of the reference path on it (the same vectorised float32 kernels), so a table maps each
# grey level exactly as the op maps it inside an image.
_RAMP = torch.arange(256, dtype=torch.uint8).view(1, 1, 256)
_SOLARIZE_LUT = np.where(np.arange(256) >= 128, 255 - np.arange(256), np.arange(256)).astype(np.uint8)


def _lut(a: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Per-value table look-up of a contiguous uint8 image array, ``[S, S, 3]`` or ``[3, S, S]``
    (one OpenCV pass over it as a 2-D single-channel array; the layout does not matter)."""
    import cv2

    return cv2.LUT(a.reshape(a.shape[0], -1), lut).reshape(a.shape)


def _brightness_lut(factor: float) -> np.ndarray:
    # torchvision adjust_brightness_image: image.mul(f).clamp_(0, 255).to(uint8)
    return _RAMP.mul(factor).clamp_(0, 255).to(torch.uint8).numpy().reshape(256)


def _contrast_lut(chw: np.ndarray, factor: float) -> np.ndarray:
    # torchvision adjust_contrast_image on uint8: mean of the floored float grey image, then
    # _blend(image, mean, f) = image.mul(f).add_(mean, alpha=1 - f).clamp_(0, 255).to(uint8).
    # ``chw``: contiguous uint8 [3, S, S] (its planes are the contiguous [S, S] tensors that
    # torchvision's unbind gives, so the grey image and its mean are computed identically).
    r, g, b = torch.from_numpy(chw).unbind(dim=-3)
    grey = r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(dim=-3).floor_()
    mean = torch.mean(grey, dim=(-3, -2, -1), keepdim=True)
    factor = float(factor)
    return _RAMP.mul(factor).add_(mean, alpha=(1.0 - factor)).clamp_(0, 255).to(torch.uint8).numpy().reshape(256)


def _apply_view_cpu(frame: torch.Tensor, params: ViewParams, size: int) -> torch.Tensor:
    """:func:`apply_view_reference` on CPU, faster, same output bytes.

    - the crop is copied to a contiguous ``[h, w, 3]`` block before the resize: torch's uint8
      antialiased resize then reads it in place as channels_last and writes a channels_last
      ``[3, S, S]`` (from the strided crop of a frame it repacks the input first: same bytes,
      ~20% slower on 720p frames);
    - the view then stays a numpy array in whichever layout the last operation produced,
      interleaved ``[S, S, 3]`` (``hwc``) or planar ``[3, S, S]``, and changes layout only for an
      operation that needs the other one: OpenCV's hue rotation works on interleaved pixels,
      torchvision's saturation / contrast mean / grayscale on planes; flip, look-up tables and the
      blur work on both. The result is planar;
    - brightness, contrast and solarize are one ``cv2.LUT`` pass each (tables built with
      torchvision's own arithmetic), the hue rotation avoids ``np.mod``, and the blur kernel is
      built in numpy.
    """
    import cv2

    left, top, w, h = params.box
    crop = frame[:, top : top + h, left : left + w].permute(1, 2, 0).contiguous()
    img = TF.resize(crop.permute(2, 0, 1), [size, size], antialias=True)
    a, hwc = np.ascontiguousarray(img.permute(1, 2, 0).numpy()), True
    if params.flip:
        a = cv2.flip(a, 1)  # mirror the columns (pixels keep their channel order)
    if params.jitter is not None:
        order, b, c, s, hue = params.jitter
        for op in order:
            if op == 0:
                a = _lut(a, _brightness_lut(b))
            elif op == 1:
                a, hwc = _planar(a, hwc), False
                a = _lut(a, _contrast_lut(a, c))
            elif op == 2:
                a, hwc = _planar(a, hwc), False
                a = TF.adjust_saturation(torch.from_numpy(a), s).numpy()
            elif hue != 0.0:
                a, hwc = _adjust_hue_hwc(_interleaved(a, hwc), hue), True
            else:  # torchvision's float HSV round trip (not a no-op), as the reference
                a, hwc = TF.adjust_hue(torch.from_numpy(_planar(a, hwc)), hue).contiguous().numpy(), False
    if params.grayscale:
        grey = TF.rgb_to_grayscale(torch.from_numpy(_planar(a, hwc)), num_output_channels=3)
        a, hwc = grey.contiguous().numpy(), False
    if params.blur_sigma is not None:
        a = _blur_cv2(a, hwc, _gaussian_kernel(params.blur_sigma, (size, size)))
    if params.solarize:
        a = _lut(a, _SOLARIZE_LUT)
    return torch.from_numpy(_planar(a, hwc))


def _gaussian_kernel(sigma: float, hw) -> np.ndarray:
    """1-D kernel of :func:`gaussian_blur` (radius ``ceil(3σ)`` clamped to the image), float32."""
    radius = int(math.ceil(3.0 * sigma))
    radius = max(1, min(radius, int(hw[-1]) - 1, int(hw[-2]) - 1))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).astype(np.float32)


def _interleaved(a: np.ndarray, hwc: bool) -> np.ndarray:
    """A contiguous uint8 image array as ``[S, S, 3]``: itself when ``hwc``, else the planar
    ``[3, S, S]`` merged (``cv2.merge``, several times faster than a numpy transpose copy)."""
    import cv2

    return a if hwc else cv2.merge([a[0], a[1], a[2]])


def _planar(a: np.ndarray, hwc: bool) -> np.ndarray:
    """A contiguous uint8 image array as contiguous ``[3, S, S]``: itself unless ``hwc``, else the
    interleaved ``[S, S, 3]`` split (``cv2.split`` into the planes of one array)."""
    import cv2

    if not hwc:
        return a
    out = np.empty((3,) + a.shape[:2], dtype=a.dtype)
    planes = cv2.split(a, [out[0], out[1], out[2]])
    if not all(np.shares_memory(p, out[c]) for c, p in enumerate(planes)):  # binding allocated anew
        out = np.stack(planes)
    return out


def _blur_cv2(a: np.ndarray, hwc: bool, kernel: np.ndarray) -> np.ndarray:
    """:func:`gaussian_blur`'s OpenCV path on a contiguous uint8 image array in either layout: the
    interleaved image in one call (as :func:`gaussian_blur`), a planar one plane at a time (no
    layout change; the same bytes, the filter is separable per channel)."""
    import cv2

    if hwc:
        return cv2.sepFilter2D(a, -1, kernel, kernel, borderType=cv2.BORDER_REFLECT_101)
    out = np.empty_like(a)
    for c in range(a.shape[0]):
        cv2.sepFilter2D(a[c], -1, kernel, kernel, dst=out[c], borderType=cv2.BORDER_REFLECT_101)
    return out


def _adjust_hue_hwc(hwc: np.ndarray, hue: float) -> np.ndarray:
    """:func:`adjust_hue`'s OpenCV path on a contiguous uint8 ``[S, S, 3]`` array (returned in the
    same layout), same bytes, faster: the wrap of the rotated hue x into [0, 360) is a conditional
    subtract / add instead of ``np.mod`` (equal for x in (−360, 720): ``x − 360`` is exact there,
    and ``x + 360`` for x < 0 is what ``np.mod`` computes)."""
    import cv2

    rgb = np.multiply(hwc, np.float32(1.0 / 255.0), dtype=np.float32)
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)  # H in degrees [0, 360)
    h = hsv[..., 0]
    shift = np.float32(hue * 360.0)
    h += shift
    np.subtract(h, np.float32(360.0), out=h, where=h >= np.float32(360.0))
    np.add(h, np.float32(360.0), out=h, where=h < np.float32(0.0))
    out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    # = clip(rint(out·255), 0, 255) as uint8: OpenCV rounds half to even as np.rint, and the HSV→RGB
    # output is never below −0.5/255, so the absolute value does not change a result
    return cv2.convertScaleAbs(out, alpha=255.0)


def adjust_hue(img: torch.Tensor, hue: float, use_cv2: Optional[bool] = None) -> torch.Tensor:
    """Rotate the hue of a uint8 ``[3, H, W]`` RGB image by ``hue`` turns (in [-0.5, 0.5]).

    torchvision's ``adjust_hue`` on non-CPU tensors; on CPU the same HSV rotation through OpenCV's
    float HSV conversion (~4x faster; results agree within ±1 grey level). ``use_cv2`` forces a path.
    """
    if use_cv2 is None:
        use_cv2 = img.device.type == "cpu"
    if not use_cv2 or hue == 0.0:
        return TF.adjust_hue(img, hue)
    import cv2

    rgb = np.ascontiguousarray(img.permute(1, 2, 0).numpy()).astype(np.float32) * np.float32(1.0 / 255.0)
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)  # H in degrees [0, 360)
    hsv[..., 0] = np.mod(hsv[..., 0] + np.float32(hue * 360.0), np.float32(360.0))
    out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return torch.from_numpy(np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)).permute(2, 0, 1)


def gaussian_blur(img: torch.Tensor, sigma: float, use_cv2: Optional[bool] = None) -> torch.Tensor:
    """Gaussian blur of a uint8 ``[3, H, W]`` image: radius ``ceil(3σ)``, reflect (101) borders.

    The kernel is torchvision's ``gaussian_blur`` kernel for ``kernel_size = 2·ceil(3σ) + 1``, applied
    as two 1-D passes: with OpenCV on CPU tensors (~10x faster than a torch depthwise convolution),
    with ``conv2d`` on other devices (results may differ by ±1 grey level between the two).
    The seed used PIL's ``GaussianBlur(radius=σ)``. ``use_cv2`` forces a path (default: by device).
    """
    radius = int(math.ceil(3.0 * sigma))
    radius = max(1, min(radius, img.shape[-1] - 1, img.shape[-2] - 1))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(torch.float32)
    if use_cv2 is None:
        use_cv2 = img.device.type == "cpu"
    if use_cv2:
        import cv2

        hwc = np.ascontiguousarray(img.permute(1, 2, 0).numpy())
        k = kernel.numpy()
        out = cv2.sepFilter2D(hwc, -1, k, k, borderType=cv2.BORDER_REFLECT_101)
        return torch.from_numpy(out).permute(2, 0, 1)
    kernel = kernel.to(img.device)
    out = torch.nn.functional.pad(img.to(torch.float32)[:, None], (radius, radius, radius, radius), mode="reflect")
    out = torch.nn.functional.conv2d(out, kernel.view(1, 1, 1, -1))
    out = torch.nn.functional.conv2d(out, kernel.view(1, 1, -1, 1))
    return out[:, 0].round_().clamp_(0, 255).to(torch.uint8)


def to_normalized_float(img: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., 3, S, S]`` → float32 scaled to [0, 1] and ImageNet-normalised.

    A contiguous CPU ``[3, S, S]`` (one view, in a DataLoader worker) takes one ``cv2.LUT`` pass per
    channel with a 256-entry float32 table per channel, built by this very formula on the grey
    ramp (:func:`_normalize_lut`), instead of four passes over the float image; subtraction and
    division are correctly rounded however they are vectorised, so the values are the same bits.
    """
    if (
        img.device.type == "cpu"
        and img.dtype == torch.uint8
        and img.ndim == 3
        and img.shape[0] == 3
        and img.is_contiguous()
    ):
        import cv2

        out = np.empty(tuple(img.shape), dtype=np.float32)
        a, lut = img.numpy(), _normalize_lut()
        for c in range(3):
            cv2.LUT(a[c], lut[c], dst=out[c])
        return torch.from_numpy(out)
    return _normalize(img)


def _normalize(img: torch.Tensor) -> torch.Tensor:
    """The formula of :func:`to_normalized_float`: ``(img / 255 − mean) / std`` in float32."""
    x = img.to(torch.float32).div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return x.sub_(mean).div_(std)


_NORMALIZE_LUT: Optional[np.ndarray] = None


def _normalize_lut() -> np.ndarray:
    """float32 ``[3, 256]``: row c is :func:`_normalize` of grey levels 0…255 in channel c."""
    global _NORMALIZE_LUT
    if _NORMALIZE_LUT is None:
        _NORMALIZE_LUT = np.ascontiguousarray(_normalize(_RAMP.expand(3, 1, 256)).numpy().reshape(3, 256))
    return _NORMALIZE_LUT


def denormalize_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_normalized_float` (for pictures), rounded and clamped to uint8."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x * std + mean).mul(255.0).round().clamp(0, 255).to(torch.uint8)
