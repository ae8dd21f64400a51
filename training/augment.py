"""Batched augmentation on tensors (runs on the GPU when training there).

The paper's augmentations — flips, rotation by up to ±10°, zoom, random contrast — plus, as
options, the photometric and optical variation between laboratories, microscopes and cameras
that a model must survive to work on a lab it never saw (the LISC cross-lab test in
``docs/cross-source.md``):

- stain: per-channel gain (``stain_jitter``, legacy) and haematoxylin/eosin optical-density
  jitter (``hed_jitter``, Tellez et al. 2018);
- camera: white-balance casts (``white_balance``), hue, saturation and gamma jitter,
  brightness, sensor noise (``noise``) and JPEG compression (``jpeg_p``);
- stain colour identity: random permutations of the colour channels (``channel_swap_p``) and
  grey images (``grayscale_p``). Nuclei range from deep blue to magenta and red cells from pink
  to blue-grey between the sources we have (BCCD, BCD and Raabin-WBC fields in TXL-PBC), far
  beyond a hue jitter; a model that must also classify a channel-swapped or grey cell has to
  rely on structure and relative intensity rather than on one lab's palette;
- lab palette: the crop's CIE-LAB mean and standard deviation replaced by those of a crop from
  another lab (``lab_style_p``; a per-crop Reinhard transfer to a random lab's style, as in
  RandStainNA, Shen et al. 2022). The style bank comes from the training packs and the
  unlabelled labs' crops (:func:`style_bank`), one group per lab, each drawn equally often, so
  PBC's labelled cells are also seen in the Raabin-WBC and BCD palettes;
- optics: defocus blur (``blur_p``/``blur_sigma``) and a wider zoom range (``zoom``) so that a
  moderately wrong pixel-size estimate degrades gracefully.

Every option is off (or the paper's value) by default, so old configs train exactly as before.
Each sample gets its own draw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation strengths; the defaults are the paper's geometric augmentation only.

    Attributes
    ----------
    flip, rot90 : bool
        Random horizontal/vertical flips and 90° rotations.
    max_rotation_deg : float
        Uniform rotation in ``±max_rotation_deg``.
    zoom : tuple of float
        Scale factor range (``> 1`` enlarges the cell); ``(0.7, 1.3)`` covers a ±30 % pixel-size
        error.
    max_shift : float
        Translation, as a fraction of the crop side.
    padding : {"border", "reflection", "zeros"}
        How :func:`torch.nn.functional.grid_sample` fills pixels from outside the crop. With a
        wide zoom-out ``"reflection"`` shows mirrored field instead of smeared edge pixels.
    contrast : tuple of float
        Contrast factor range about the per-sample mean.
    stain_jitter : float
        Per-channel linear gain ``1 ± stain_jitter`` (legacy; e.g. 0.08).
    hed_jitter : float
        Haematoxylin/eosin/DAB optical-density scale ``1 ± s`` and shift ``± s`` (e.g. 0.05).
    white_balance : float
        White-balance cast: per-channel gains ``exp(U(-w, w))`` rescaled to a geometric mean of
        1 (colour changes, overall brightness does not); e.g. 0.1 gives casts up to about ±10 %.
    hue : float
        Hue rotation by up to ``± hue`` of a full turn (YIQ rotation; e.g. 0.04 ≈ ±14°).
    saturation : float
        Saturation factor in ``1 ± saturation`` (blend with the grey image).
    gamma : float
        Gamma ``exp(U(-g, g))`` applied as ``x ** gamma`` (e.g. 0.25 gives 0.78–1.28).
    brightness : float
        Additive brightness in ``± brightness`` (e.g. 0.06).
    blur_p, blur_sigma : float
        Fraction of samples blurred by a Gaussian of sigma ``U(0.3, blur_sigma)`` pixels
        (defocus; at 64 px for 30 µm one pixel is ~0.47 µm).
    noise : float
        Additive Gaussian sensor noise with a per-sample std ``U(0, noise)``.
    jpeg_p : float
        Fraction of samples re-encoded as JPEG (CPU, torchvision) at a quality drawn from
        ``jpeg_quality``; the other transforms are batched, this one loops per sample.
    jpeg_quality : tuple of int
        JPEG quality range.
    channel_swap_p : float
        Fraction of samples whose colour channels are permuted (one of the five non-identity
        permutations, uniformly), after the photometric jitter.
    grayscale_p : float
        Fraction of samples replaced by their luminance on all three channels.
    lab_style_p : float
        Fraction of samples given another lab's palette: their per-channel CIE-LAB mean and
        standard deviation are replaced by those of a crop drawn from the style bank passed to
        :func:`augment_batch` (a lab drawn uniformly, then one of its crops), before the other
        photometric jitter.
    """

    flip: bool = True
    rot90: bool = True
    max_rotation_deg: float = 10.0
    zoom: tuple[float, float] = (0.9, 1.15)
    max_shift: float = 0.06
    padding: str = "border"
    contrast: tuple[float, float] = (0.8, 1.2)
    stain_jitter: float = 0.0
    hed_jitter: float = 0.0
    white_balance: float = 0.0
    hue: float = 0.0
    saturation: float = 0.0
    gamma: float = 0.0
    brightness: float = 0.0
    blur_p: float = 0.0
    blur_sigma: float = 1.2
    noise: float = 0.0
    jpeg_p: float = 0.0
    jpeg_quality: tuple[int, int] = (40, 95)
    channel_swap_p: float = 0.0
    grayscale_p: float = 0.0
    lab_style_p: float = 0.0


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator | None = None,
                  styles: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Augment a ``(N, 3, S, S)`` float batch in 0..1; every sample gets its own draw.

    ``styles`` is the style bank for ``cfg.lab_style_p`` (:func:`style_bank`): one ``(M, 6)``
    tensor of per-crop LAB means and standard deviations per lab.

    Returns a new tensor in 0..1 (``x`` itself may be modified by the 90° rotations).
    """
    n, dev = x.shape[0], x.device

    def rand(*shape):
        return torch.rand(*shape, device=dev, generator=gen)

    if cfg.rot90:
        k = (rand(n) * 4).long()
        for r in range(1, 4):
            sel = k == r
            if sel.any():
                x[sel] = torch.rot90(x[sel], r, (2, 3))
    x = _affine(x, cfg, rand)
    if cfg.lab_style_p > 0:
        if not styles:
            raise ValueError("lab_style_p needs a style bank (augment_batch(styles=...))")
        x = _lab_style(x, rand(n) < cfg.lab_style_p, styles, rand)

    mean = x.mean((1, 2, 3), keepdim=True)
    c = cfg.contrast[0] + rand(n, 1, 1, 1) * (cfg.contrast[1] - cfg.contrast[0])
    x = (x - mean) * c + mean
    if cfg.stain_jitter > 0:
        gain = 1 + (rand(n, 3, 1, 1) * 2 - 1) * cfg.stain_jitter
        x = x * gain
    if cfg.hed_jitter > 0:
        x = _hed_jitter(x, cfg.hed_jitter, rand)
    if cfg.white_balance > 0:
        x = x * white_balance_gains(rand(n, 3) * 2 - 1, cfg.white_balance)[:, :, None, None]
    if cfg.hue > 0 or cfg.saturation > 0:
        x = _hue_saturation(x.clamp(0, 1), (rand(n) * 2 - 1) * cfg.hue,
                            1 + (rand(n) * 2 - 1) * cfg.saturation)
    if cfg.gamma > 0:
        g = torch.exp((rand(n, 1, 1, 1) * 2 - 1) * cfg.gamma)
        x = x.clamp(1e-4, 1) ** g
    if cfg.brightness > 0:
        x = x + (rand(n, 1, 1, 1) * 2 - 1) * cfg.brightness
    if cfg.channel_swap_p > 0:
        x = _swap_channels(x, rand(n) < cfg.channel_swap_p, rand)
    if cfg.grayscale_p > 0:
        grey = torch.einsum("c,nchw->nhw", _RGB2YIQ[0].to(x.device, x.dtype), x)[:, None]
        x = torch.where((rand(n) < cfg.grayscale_p)[:, None, None, None], grey.expand_as(x), x)
    if cfg.blur_p > 0:
        sel = rand(n) < cfg.blur_p
        sigma = 0.3 + rand(n) * max(cfg.blur_sigma - 0.3, 0.0)
        x = torch.where(sel[:, None, None, None], gaussian_blur(x, sigma), x)
    if cfg.noise > 0:
        std = rand(n, 1, 1, 1) * cfg.noise
        x = x + std * torch.randn(x.shape, device=dev, generator=gen)
    x = x.clamp_(0, 1)
    if cfg.jpeg_p > 0:
        x = _jpeg(x, rand(n) < cfg.jpeg_p, cfg.jpeg_quality, rand)
    return x


def _affine(x: torch.Tensor, cfg: AugmentConfig, rand) -> torch.Tensor:
    """Flip, rotation, zoom and shift in one resampling (one interpolation blur, not four)."""
    n, dev = x.shape[0], x.device
    angle = (rand(n) * 2 - 1) * math.radians(cfg.max_rotation_deg)
    scale = cfg.zoom[0] + rand(n) * (cfg.zoom[1] - cfg.zoom[0])
    flip_x = torch.where(rand(n) < 0.5, -1.0, 1.0) if cfg.flip else torch.ones(n, device=dev)
    flip_y = torch.where(rand(n) < 0.5, -1.0, 1.0) if cfg.flip else torch.ones(n, device=dev)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(n, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0] = cos * flip_x
    theta[:, 0, 1] = -sin * flip_y
    theta[:, 1, 0] = sin * flip_x
    theta[:, 1, 1] = cos * flip_y
    theta[:, :, 2] = (rand(n, 2) * 2 - 1) * cfg.max_shift * 2
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=cfg.padding, align_corners=False)


#: The five ways to reorder RGB other than the identity.
_PERMUTATIONS = torch.tensor([[0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]])


def _swap_channels(x: torch.Tensor, sel: torch.Tensor, rand) -> torch.Tensor:
    """Reorder the colour channels of the selected samples, each by a random non-identity
    permutation."""
    n = x.shape[0]
    pick = (rand(n) * len(_PERMUTATIONS)).long().clamp(max=len(_PERMUTATIONS) - 1)
    order = _PERMUTATIONS.to(x.device)[pick]  # N,3
    order = torch.where(sel[:, None], order, torch.arange(3, device=x.device)[None])
    return torch.gather(x, 1, order[:, :, None, None].expand_as(x))


def white_balance_gains(u: torch.Tensor, strength: float) -> torch.Tensor:
    """Per-channel gains ``exp(u * strength)`` for ``u`` in [-1, 1], ``(N, 3)``, divided by
    their geometric mean so a cast tints the image without making it brighter or darker."""
    log_g = u * strength
    return torch.exp(log_g - log_g.mean(1, keepdim=True))


# RGB <-> YIQ (NTSC): hue is a rotation of the (I, Q) chroma plane.
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322],
                         [0.211, -0.523, 0.312]])


def _hue_saturation(x: torch.Tensor, turns: torch.Tensor, sat: torch.Tensor) -> torch.Tensor:
    """Rotate hue by ``turns`` (fraction of 360°) and scale chroma by ``sat``, per sample, as
    one linear map in YIQ space (a standard, cheap approximation of an HSV hue shift)."""
    to_yiq = _RGB2YIQ.to(x.device, x.dtype)
    to_rgb = torch.linalg.inv(to_yiq)
    a = turns * 2 * math.pi
    n = x.shape[0]
    m = torch.zeros(n, 3, 3, device=x.device, dtype=x.dtype)
    m[:, 0, 0] = 1
    m[:, 1, 1] = torch.cos(a) * sat
    m[:, 1, 2] = -torch.sin(a) * sat
    m[:, 2, 1] = torch.sin(a) * sat
    m[:, 2, 2] = torch.cos(a) * sat
    full = to_rgb @ m @ to_yiq  # N,3,3
    return torch.einsum("nij,njhw->nihw", full, x)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one ``sigma`` (pixels) per sample, as a grouped convolution
    (torchvision's ``gaussian_blur`` takes one sigma per call)."""
    n, c, h, w = x.shape
    radius = max(1, int(math.ceil(3 * float(sigma.max()))))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None] / sigma[:, None].clamp(min=1e-3)) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (N*C, K)
    y = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k[:, None, :, None], groups=n * c)
    y = F.conv2d(y, k[:, None, None, :], groups=n * c)
    return y.reshape(n, c, h, w)


def _jpeg(x: torch.Tensor, sel: torch.Tensor, quality: tuple[int, int], rand) -> torch.Tensor:
    """JPEG-compress the selected samples on the CPU (torchvision.io) at random qualities."""
    from torchvision.io import decode_jpeg, encode_jpeg

    idx = torch.nonzero(sel).flatten().tolist()
    if not idx:
        return x
    q = (quality[0] + rand(len(idx)) * (quality[1] - quality[0] + 1)).long().clamp(
        quality[0], quality[1]).tolist()
    x = x.clone()
    for i, qi in zip(idx, q):
        u8 = (x[i] * 255).round().to(torch.uint8).cpu()
        dec = decode_jpeg(encode_jpeg(u8, quality=int(qi)))
        x[i] = dec.to(x.device, x.dtype) / 255
    return x


# Colour deconvolution matrix (Ruifrok & Johnston 2001), as in skimage.color.rgb2hed.
_RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])


def _hed_jitter(x: torch.Tensor, sigma: float, rand) -> torch.Tensor:
    """Stain augmentation in optical-density space (Tellez et al. 2018): each stain's
    concentration is scaled by 1 +- sigma and shifted by +- sigma, per sample."""
    m = _RGB_FROM_HED.to(x.device, x.dtype)
    m = m / m.norm(dim=1, keepdim=True)
    inv = torch.linalg.inv(m)
    n = x.shape[0]
    od = -torch.log(x.clamp(min=1e-3)).permute(0, 2, 3, 1)  # N,H,W,3
    hed = od @ inv
    alpha = 1 + (rand(n, 1, 1, 3) * 2 - 1) * sigma
    beta = (rand(n, 1, 1, 3) * 2 - 1) * sigma
    od = (hed * alpha + beta) @ m
    return torch.exp(-od).permute(0, 3, 1, 2).clamp(0, 1)


# sRGB (D65) <-> CIE-LAB, as skimage.color.rgb2lab, batched on tensors (the inverse does not
# clip a negative Z as lab2rgb does: only very dark, very yellow targets differ).
_RGB2XYZ = torch.tensor([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169],
                         [0.019334, 0.119193, 0.950227]])
_WHITE_D65 = torch.tensor([0.95047, 1.0, 1.08883])


def rgb_to_lab(x: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` sRGB in 0..1 to CIE-LAB (L in 0..100), as ``skimage.color.rgb2lab``."""
    lin = torch.where(x > 0.04045, ((x.clamp(min=0) + 0.055) / 1.055) ** 2.4, x / 12.92)
    xyz = torch.einsum("ij,njhw->nihw", _RGB2XYZ.to(x.device, x.dtype), lin)
    xyz = xyz / _WHITE_D65.to(x.device, x.dtype)[None, :, None, None]
    f = torch.where(xyz > 0.008856, xyz.clamp(min=1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
    return torch.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]),
                        200 * (f[:, 1] - f[:, 2])], 1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_lab`, clipped to 0..1; as ``skimage.color.lab2rgb``, a very
    dark, very yellow colour's negative Z is clipped first."""
    fy = (lab[:, 0] + 16) / 116
    f = torch.stack([fy + lab[:, 1] / 500, fy, (fy - lab[:, 2] / 200).clamp(min=0)], 1)
    xyz = torch.where(f > 0.2068966, f ** 3, (f - 16 / 116) / 7.787)
    xyz = xyz * _WHITE_D65.to(lab.device, lab.dtype)[None, :, None, None]
    lin = torch.einsum("ij,njhw->nihw", torch.linalg.inv(_RGB2XYZ).to(lab.device, lab.dtype),
                       xyz)
    rgb = torch.where(lin > 0.0031308, 1.055 * lin.clamp(min=1e-12) ** (1 / 2.4) - 0.055,
                      12.92 * lin)
    return rgb.clamp(0, 1)


def lab_stats(x: torch.Tensor) -> torch.Tensor:
    """Per-crop CIE-LAB channel means and standard deviations, ``(N, 6)``, of ``(N, 3, H, W)``
    crops in 0..1."""
    lab = rgb_to_lab(x)
    return torch.cat([lab.mean((2, 3)), lab.std((2, 3))], 1)


def style_bank(groups: list, batch: int = 1024) -> list[torch.Tensor]:
    """A style bank for :func:`augment_batch`: per group (one lab), the :func:`lab_stats` of
    its ``(M, S, S, 3) uint8`` crops."""
    bank = []
    for crops in groups:
        rows = [lab_stats(torch.from_numpy(crops[i:i + batch]).permute(0, 3, 1, 2).float() / 255)
                for i in range(0, len(crops), batch)]
        bank.append(torch.cat(rows))
    return bank


def _lab_style(x: torch.Tensor, sel: torch.Tensor, styles: list[torch.Tensor], rand
               ) -> torch.Tensor:
    """Per-crop Reinhard transfer of the selected samples to a random bank crop's LAB mean and
    standard deviation (lab first, uniformly; then one of its crops)."""
    n, dev = x.shape[0], x.device
    lab_pick = (rand(n) * len(styles)).long().clamp(max=len(styles) - 1)
    row = rand(n)
    # One indexing into the concatenated bank (no per-sample host sync on a GPU).
    sizes = torch.tensor([len(s) for s in styles], device=dev)
    first = sizes.cumsum(0) - sizes
    within = torch.minimum((row * sizes[lab_pick]).long(), sizes[lab_pick] - 1)
    target = torch.cat(list(styles)).to(dev, x.dtype)[first[lab_pick] + within]
    lab = rgb_to_lab(x)
    mean, std = lab.mean((2, 3), keepdim=True), lab.std((2, 3), keepdim=True).clamp(min=1e-3)
    moved = (lab - mean) / std * target[:, 3:, None, None] + target[:, :3, None, None]
    return torch.where(sel[:, None, None, None], lab_to_rgb(moved), x)
