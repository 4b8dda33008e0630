"""Weight-free image scores of an edit against the reference generations (PIE-Bench's PSNR / SSIM), and RIEBench's
mask preparation: what a model without an oracle (FLUX, SDXL, any real model) can always be scored with.

The references are the model's own generations of the pair's source prompt and of its target prompt, same seed.
An edited image is compared

* outside the edit mask with the SOURCE reference (preservation: what should not change did not), and
* inside the mask with the TARGET reference (a success proxy: the edited region looks like the target's);

with no mask both comparisons cover the whole image (`WHOLE_IMAGE`, said in records and tables).

SSIM is the gaussian-window SSIM of Wang et al. (2004): window sigma 1.5 px, C1 = (0.01 L)^2, C2 = (0.03 L)^2,
computed per RGB channel on the 0..255 scale and averaged over the channels and the region's pixels.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..regions import mask_values

PSNR_CAP = 60.0  # dB reported for pixel-identical regions (an unbounded mean otherwise)
SSIM_SIGMA = 1.5  # px, the gaussian window of SSIM
WHOLE_IMAGE = "whole image: no mask"  # the region of the pixel scores of a pair without a mask
MASKED = "mask"
PIXEL_SCORES = ("psnr_outside", "ssim_outside", "psnr_inside", "ssim_inside")


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """(2r+1,) normalised 1-D gaussian, r = ceil(3 sigma) (at least 1)."""
    r = max(1, int(np.ceil(3 * sigma)))
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x_BCHW: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable gaussian blur of (B, C, H, W) float64 maps, edges replicated (same shape back)."""
    if sigma <= 0:
        return x_BCHW
    k = gaussian_kernel(sigma).to(x_BCHW.dtype)
    r, C = len(k) // 2, x_BCHW.shape[1]
    x = F.pad(x_BCHW, (r, r, r, r), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)


def _region(shape: tuple[int, int], region_HW: np.ndarray | None) -> np.ndarray:
    return np.ones(shape, bool) if region_HW is None else np.asarray(region_HW, bool)


def psnr(a_HWC: np.ndarray, b_HWC: np.ndarray, region_HW: np.ndarray | None = None) -> float:
    """PSNR (dB, 8-bit peak) of two images over the pixels of `region_HW` (None: the whole image); identical
    regions score `PSNR_CAP`, an empty region NaN."""
    keep = _region(a_HWC.shape[:2], region_HW)
    if not keep.any():
        return float("nan")
    diff = a_HWC.astype(np.float64)[keep] - b_HWC.astype(np.float64)[keep]
    mse = float((diff ** 2).mean())
    if mse == 0:
        return PSNR_CAP
    return float(min(PSNR_CAP, 10 * np.log10(255.0 ** 2 / mse)))


def ssim_map(a_HWC: np.ndarray, b_HWC: np.ndarray, data_range: float = 255.0) -> np.ndarray:
    """(H, W) SSIM per pixel (mean over channels) of two images with the gaussian window (edges replicated)."""
    if a_HWC.shape != b_HWC.shape:
        raise ValueError(f"images differ in shape: {a_HWC.shape} vs {b_HWC.shape}")
    a = torch.from_numpy(np.asarray(a_HWC, np.float64))
    b = torch.from_numpy(np.asarray(b_HWC, np.float64))
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    a, b = a.permute(2, 0, 1)[None], b.permute(2, 0, 1)[None]  # (1, C, H, W)
    mu_a, mu_b = gaussian_blur(a, SSIM_SIGMA), gaussian_blur(b, SSIM_SIGMA)
    var_a = gaussian_blur(a * a, SSIM_SIGMA) - mu_a ** 2
    var_b = gaussian_blur(b * b, SSIM_SIGMA) - mu_b ** 2
    cov = gaussian_blur(a * b, SSIM_SIGMA) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s[0].mean(0).numpy()


def ssim(a_HWC: np.ndarray, b_HWC: np.ndarray, region_HW: np.ndarray | None = None) -> float:
    """Mean SSIM of two 8-bit images over the pixels of `region_HW` (None: the whole image; empty: NaN). The
    windows see the whole image, so a region's border pixels also weigh their surroundings."""
    keep = _region(a_HWC.shape[:2], region_HW)
    if not keep.any():
        return float("nan")
    return float(ssim_map(a_HWC, b_HWC)[keep].mean())


def pixel_scores(edited_HWC: np.ndarray, source_HWC: np.ndarray, target_HWC: np.ndarray,
                 mask_HW: np.ndarray | None) -> dict:
    """{psnr_outside, ssim_outside}: against the source reference outside the mask; {psnr_inside, ssim_inside}:
    against the target reference inside it; "region": `MASKED` or `WHOLE_IMAGE` (no mask: both over every pixel).
    A score over an empty region (a mask covering everything, or nothing) is None."""
    if mask_HW is None:
        outside = inside = None
    else:
        inside = np.asarray(mask_HW, bool)
        outside = ~inside

    def num(v: float):
        return None if np.isnan(v) else v

    return {"region": WHOLE_IMAGE if mask_HW is None else MASKED,
            "psnr_outside": num(psnr(edited_HWC, source_HWC, outside)),
            "ssim_outside": num(ssim(edited_HWC, source_HWC, outside)),
            "psnr_inside": num(psnr(edited_HWC, target_HWC, inside)),
            "ssim_inside": num(ssim(edited_HWC, target_HWC, inside))}


# ------------------------------------------------------------------ RIEBench's masks
def prepare_mask(mask_HW: np.ndarray, grid: tuple[int, int], blur: float = 1 / 64,
                 threshold: float = 0.5) -> torch.Tensor:
    """(T,) 0/1 float token mask from a user's mask image as RIEBench prepares it: blurred (gaussian, sigma `blur`
    of the mask's longer side), resized to the token grid (area-averaged, as `regions.mask_to_grid`; bilinear for
    a mask coarser than the grid) and thresholded (> `threshold`; a non-empty mask that thresholds to nothing keeps its
    strongest token). Values above 1 are read as 0..255."""
    m = mask_values(mask_HW, np.float64)
    x = gaussian_blur(torch.from_numpy(np.ascontiguousarray(m))[None, None], blur * max(m.shape))
    down = m.shape[0] >= grid[0] and m.shape[1] >= grid[1]
    x = (F.adaptive_avg_pool2d(x, grid) if down else F.interpolate(x, size=grid, mode="bilinear",
                                                                   align_corners=False))[0, 0].reshape(-1)
    tokens = (x > threshold).double()
    if not tokens.any() and m.max(initial=0) > 0:
        tokens[int(x.argmax())] = 1.0
    return tokens.float()
