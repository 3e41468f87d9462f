"""Stage `stylize`: neural style transfer — Gatys optimisation and Johnson's fast feed-forward nets.

Images are (1, 3, H, W) float in [0, 1]. Gatys: optimise the pixels so that VGG features match the content
image at ``content_layer`` and the Gram matrices match the (blended) style images at ``style_layers``,
plus total variation; L-BFGS (default) or Adam, optionally coarse-to-fine over ``scales``. Fast: train a
TransformerNet per style on a folder of content images with the same losses, then one forward pass per
image at any size.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ganops import images
from ganops.config import StyleParams
from ganops.images import ImageError, open_image, to_tensor
from ganops.losses import content_loss, gram, style_loss, tv_loss
from ganops.models.style import TransformerConfig, TransformerNet, VGGFeatures

log = logging.getLogger(__name__)


class StyleError(RuntimeError):
    """A content or style image cannot be used; the message names the file."""


# ----------------------------------------------------------------------------- images


def load_image(path: str | Path, max_side: int) -> torch.Tensor:
    """Read an image as (1, 3, H, W) in [0, 1], EXIF-rotated, downscaled so its longer side <= max_side.

    Raises:
        StyleError: missing, empty, unreadable or corrupt file (named in the message).
    """
    try:
        return to_tensor(open_image(path, max_side=max_side))
    except ImageError as err:
        raise StyleError(f"{path}: {err}") from None


def resize_long(x: torch.Tensor, long_side: int) -> torch.Tensor:
    """Resize (B, 3, H, W) so the longer side is ``long_side`` (aspect kept)."""
    H, W = x.shape[-2:]
    s = long_side / max(H, W)
    size = (max(1, round(H * s)), max(1, round(W * s)))
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=s < 1)


def list_images(folder: str | Path, *, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (and its subfolders if ``recursive``), sorted; hidden ones ignored."""
    if not Path(folder).is_dir():
        raise StyleError(f"{folder}: no such folder")
    return images.list_images(folder, recursive=recursive)


# ----------------------------------------------------------------------------- colour


_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def to_yiq(x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", _YIQ.to(x), x)


def from_yiq(x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(_YIQ).to(x), x)


def keep_luminance(result: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Luminance-only transfer (Gatys et al. 2016): the result's Y with the content's chroma (I, Q)."""
    y = to_yiq(result)[:, :1]
    iq = to_yiq(F.interpolate(content, size=result.shape[-2:], mode="bilinear", align_corners=False))[:, 1:]
    return from_yiq(torch.cat([y, iq], 1)).clamp(0, 1)


def match_colors(style: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Colour matching: give the style image the content's per-channel mean and covariance (before transfer).
    (Either way round: ``match_colors(photo, painting)`` is the photo in the painting's colours.)"""
    s, c = style.reshape(3, -1), content.reshape(3, -1)
    ms, mc = s.mean(1, keepdim=True), c.mean(1, keepdim=True)
    cs, cc = torch.cov(s) + 1e-5 * torch.eye(3), torch.cov(c) + 1e-5 * torch.eye(3)

    def sqrtm(m: torch.Tensor, inv: bool = False) -> torch.Tensor:
        e, v = torch.linalg.eigh(m)
        e = e.clamp_min(1e-8) ** (-0.5 if inv else 0.5)
        return v @ torch.diag(e) @ v.T

    out = sqrtm(cc) @ sqrtm(cs, inv=True) @ (s - ms) + mc
    return out.reshape(style.shape).clamp(0, 1)


# ----------------------------------------------------------------------------- Gatys


@dataclass
class StyleResult:
    image: torch.Tensor  # (1, 3, H, W) in [0, 1]
    losses: dict[str, float]  # final content / style / tv / total
    start_total: float  # total loss at the first evaluation
    evaluations: int
    history: list[float] = field(default_factory=list)  # total loss per evaluation


def style_targets(
    styles: list[tuple[torch.Tensor, float]], vgg: VGGFeatures, layers: list[str], long_side: int
) -> dict[str, torch.Tensor]:
    """Blended target Gram matrices: sum_i w_i * Gram(style_i) with weights normalised to 1."""
    total = sum(w for _, w in styles)
    grams: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for img, w in styles:
            feats = vgg(resize_long(img, long_side))
            for n in layers:
                g = gram(feats[n]) * (w / total)
                grams[n] = grams[n] + g if n in grams else g
    return grams


def _optimise(
    x0: torch.Tensor,
    c_feat: torch.Tensor,
    grams: dict[str, torch.Tensor],
    vgg: VGGFeatures,
    p: StyleParams,
    losses: dict[str, float],
    history: list[float],
    desc: str | None,
    steps: int,
) -> torch.Tensor:
    """Run ``steps`` loss evaluations of L-BFGS (or Adam steps) on the pixels, from ``x0``.

    Returns the best image evaluated (L-BFGS without line search can overshoot on its first steps), and
    leaves that image's loss terms in ``losses``.
    """
    x = x0.detach().contiguous().requires_grad_(True)
    best: dict = {"total": math.inf}
    bar = tqdm(total=steps, desc=desc, unit="eval", disable=desc is None, mininterval=1.0)
    opt: torch.optim.Optimizer
    if p.optimizer == "lbfgs":
        # no line search: one evaluation per iteration, which measured better per evaluation here
        # (bench/style_transfer.py) than strong-Wolfe under the in-closure clamp
        opt = torch.optim.LBFGS([x], lr=p.lr, max_iter=steps, max_eval=steps, history_size=100,
                                tolerance_grad=0.0, tolerance_change=0.0)  # fmt: skip
    else:
        opt = torch.optim.Adam([x], lr=p.lr)

    def closure() -> torch.Tensor:
        with torch.no_grad():  # keep the pixels a valid image at every evaluation, not only at the end
            x.clamp_(0, 1)
        opt.zero_grad(set_to_none=True)
        feats = vgg(x)
        lc = p.content_weight * content_loss(feats[p.content_layer], c_feat)
        ls = p.style_weight * style_loss(feats, grams, p.style_layers)
        lt = p.tv_weight * tv_loss(x)
        total = lc + ls + lt
        total.backward()
        history.append(total.item())
        if history[-1] < best["total"]:
            best.update(
                content=lc.item(), style=ls.item(), tv=lt.item(), total=history[-1], x=x.detach().clone()
            )
        bar.update(1)
        return total

    if p.optimizer == "lbfgs":
        opt.step(closure)  # type: ignore[arg-type]
    else:
        for _ in range(steps):
            opt.step(closure)  # type: ignore[arg-type]
    bar.close()
    if "x" not in best:  # every evaluation was NaN/inf: keep the start, say so through the losses
        return x0.detach().clamp(0, 1)
    out = best.pop("x")
    losses.update(best)
    return out


def gatys(
    content: torch.Tensor,
    styles: list[tuple[torch.Tensor, float]],
    vgg: VGGFeatures,
    p: StyleParams,
    *,
    seed: int = 0,
    progress: bool = False,
    ladder: list[tuple[int, int]] | None = None,
) -> StyleResult:
    """Optimise an image with ``content``'s structure and the blended ``styles``' textures.

    Args:
        content: (1, 3, H, W) in [0, 1]; resized so its longer side is ``p.size`` (the ladder's last side).
        styles: [(image, blend weight)]; each resized to ``p.style_scale`` x the working size.
        vgg: feature extractor holding ``p.content_layer`` and ``p.style_layers``.
        p: the ``style`` params group (weights, init, optimizer, steps = loss evaluations per scale).
        ladder: [(long side, loss evaluations)] coarse to fine, each scale starting from the previous
            result upsampled; default ``p.scales`` x ``p.size`` with ``p.steps`` each (:func:`print_ladder`
            builds one for a print-size result).
    """
    g = torch.Generator().manual_seed(seed)
    if p.preserve_color == "match":
        styles = [(match_colors(s, content), w) for s, w in styles]
    x: torch.Tensor | None = None
    history: list[float] = []
    losses: dict[str, float] = {}
    ladder = ladder or [(max(16, round(p.size * scale)), p.steps) for scale in p.scales]
    for side, steps in ladder:  # coarse to fine: each scale starts from the previous result, upsampled
        c = resize_long(content, side)
        with torch.no_grad():
            c_feat = vgg(c, upto=p.content_layer)[p.content_layer]
        grams = style_targets(styles, vgg, list(p.style_layers), round(side * p.style_scale))
        if x is None:
            noise = torch.rand(c.shape, generator=g)
            if p.init == "palette":  # the photo in the painting's colours (the heaviest of a blend)
                x = match_colors(c, max(styles, key=lambda sw: sw[1])[0])
            else:
                x = {"content": c.clone(), "noise": noise, "content+noise": (0.6 * c + 0.4 * noise)}[p.init]
        else:
            x = F.interpolate(x, size=c.shape[-2:], mode="bilinear", align_corners=False)
        desc = f"gatys {side}px" if progress else None
        x = _optimise(x, c_feat, grams, vgg, p, losses, history, desc, steps)
    assert x is not None
    out = x.detach().clamp(0, 1)
    if p.preserve_color == "luminance":
        out = keep_luminance(out, content)
    return StyleResult(out, dict(losses), history[0] if history else math.nan, len(history), history)


def print_ladder(working: int, target: int, steps: int, refine_steps: int) -> list[tuple[int, int]]:
    """Coarse to fine up to a print-size long side ``target``: from the ``working`` size (``steps`` loss
    evaluations, where the composition is decided), doubling, to ``target`` (``refine_steps`` at each
    larger scale, where one evaluation costs (side / working)^2 as much: they refine texture and detail).
    ``target`` <= ``working``: one scale at ``target``."""
    sides = []
    side = working
    while side < target:
        sides.append(side)
        side *= 2
    sides.append(target)
    return [(s, steps if i == 0 else refine_steps) for i, s in enumerate(sides)]


# ----------------------------------------------------------------------------- fast (Johnson et al.)


def train_fast(
    contents: Sequence[torch.Tensor],
    styles: list[tuple[torch.Tensor, float]],
    vgg: VGGFeatures,
    p: StyleParams,
    *,
    seed: int = 0,
    progress: bool = False,
    on_metrics: Callable[[int, dict[str, float]], None] | None = None,
) -> TransformerNet:
    """Train a TransformerNet for one (blended) style on ``contents``, whole photos at the working size.

    Each step takes ``p.fast_batch_size`` photos drawn at random, each resized as :func:`gatys` sizes its
    content (long side ``p.size``); photos of one shape go through the nets as one batch. ``contents`` is
    a list of photos (held in memory) or a :class:`PhotoCorpus` (read from disk at each draw, already at
    the working size). The net's ``precision`` attribute says how it was trained (:func:`fast_precision`).
    """
    bf16 = fast_precision(p.fast_precision) == "bf16"
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = TransformerNet(TransformerConfig(width=p.fast_width))
    opt = torch.optim.Adam(net.parameters(), lr=p.fast_lr)
    grams = style_targets(styles, vgg, list(p.style_layers), round(p.size * p.style_scale))
    # Whole photos at Gatys's working scale: the net learns textures of the size they have in a Gatys
    # result and the Gram matrices of whole pictures, which is how it is applied and scored. Trained on
    # square crops instead, its output stayed at 2x Gatys's loss (at a larger scale, 5x; BENCHMARKS.md).
    pool = contents if isinstance(contents, PhotoCorpus) else [resize_long(c, p.size) for c in contents]

    def losses(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Content, style and TV loss (weighted as Gatys weighs them) of the net's output for ``x``
        (b, 3, H, W)."""
        # The convolutions in bfloat16 where the CPU has native bf16 (1.7x the fp32 step here,
        # BENCHMARKS.md); the losses in fp32: a Gram matrix summed in bf16 (8-bit mantissa) is too coarse.
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = net(x)  # (b, 3, H, W)
            with torch.no_grad():
                target = vgg(x, upto=p.content_layer)[p.content_layer]
            feats = vgg(y)
        feats = {k: f.float() for k, f in feats.items()}
        return (
            p.content_weight * content_loss(feats[p.content_layer], target.float()),
            p.style_weight * style_loss(feats, grams, p.style_layers),
            p.tv_weight * tv_loss(y.float()),
        )

    bar = tqdm(
        range(1, p.fast_steps + 1), desc="fast style", unit="step", disable=not progress, mininterval=1.0
    )
    for step in bar:
        by_shape: dict[tuple[int, ...], list[torch.Tensor]] = {}
        for i in torch.randint(len(pool), (p.fast_batch_size,), generator=g).tolist():
            photo = pool[i]  # a corpus reads it from disk now
            by_shape.setdefault(tuple(photo.shape), []).append(photo)
        lc = ls = lt = torch.zeros(())
        for same in by_shape.values():  # each term: the mean over the step's photos
            c, s, t = losses(torch.cat(same))
            share = len(same) / p.fast_batch_size
            lc, ls, lt = lc + share * c, ls + share * s, lt + share * t
        # The net starts far from the photo (Gatys starts at it) and, on a corpus, the cheapest way down
        # is a texture that ignores each photo; content weighted fast_content_scale x keeps the photo
        # (BENCHMARKS.md, "Fast nets on a corpus")
        opt.zero_grad(set_to_none=True)
        (p.fast_content_scale * lc + ls + lt).backward()
        opt.step()
        loss = lc + ls + lt  # Gatys's objective, what the metrics and the progress bar report
        if on_metrics and (step % 10 == 0 or step == p.fast_steps):
            on_metrics(step, {"fast_content": lc.item(), "fast_style": ls.item(), "fast_total": loss.item()})
        bar.set_postfix(loss=f"{loss.item():.3g}", refresh=False)
    net.precision = "bf16" if bf16 else "fp32"
    net.working_size = p.size
    return net.eval()


def fast_precision(choice: str) -> str:
    """``style.fast_precision`` resolved: "auto" is bf16 where this CPU computes bf16 natively
    (AVX512-BF16 / AMX, through oneDNN), else fp32 (emulated bf16 is slower than fp32)."""
    if choice != "auto":
        return choice
    return (
        "bf16"
        if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        else "fp32"
    )


@torch.inference_mode()
def fast_stylize(net: TransformerNet, image: torch.Tensor) -> torch.Tensor:
    """One forward pass: (1, 3, H, W) -> (1, 3, H, W), any size."""
    return net(image)


def fast_stylize_at_scale(net: TransformerNet, image: torch.Tensor) -> torch.Tensor:
    """(1, 3, H, W) -> (1, 3, H, W) styled at the scale the net learned: resized to its working long side
    (``net.working_size``), through the net, and back to H x W. A net's strokes have the size they had in
    training; on a photo of another size they would come out too small (or too big) and lose the painting.
    A net without a recorded size runs at the photo's own size."""
    size = net.working_size
    if not size or max(image.shape[-2:]) == size:
        return fast_stylize(net, image)
    y = fast_stylize(net, resize_long(image, size))
    return F.interpolate(y, size=image.shape[-2:], mode="bicubic", align_corners=False).clamp(0, 1)


# ----------------------------------------------------------------------------- a style's inputs


def style_files(style_dir: Path, blend: dict[str, float]) -> list[tuple[Path, float]]:
    """The image of each style in ``blend`` ({file stem: weight}), found in ``style_dir`` by its stem.

    Raises:
        StyleError: a stem has no image in ``style_dir`` (the message lists what it holds).
    """
    files = {f.stem: f for f in list_images(style_dir)}
    missing = [stem for stem in blend if stem not in files]
    if missing:
        raise StyleError(
            f"style image(s) {missing} not in {style_dir}/ (it holds: {sorted(files) or 'nothing'})"
        )
    return [(files[stem], w) for stem, w in blend.items()]


def load_contents(files: list[Path], sp: StyleParams) -> Iterator[torch.Tensor]:
    """Each content photo in ``files``, loaded in turn (at most ``sp.max_side``).

    Raises:
        StyleError: no photos at all, or an unreadable one (named in the message).
    """
    if not files:
        raise StyleError(f"no images in {sp.content_dir}/")
    for f in files:
        yield load_image(f, sp.max_side)


class PhotoCorpus(Sequence[torch.Tensor]):
    """A folder of photos read on demand, each at a long side of ``size`` (what a fast net trains on): the
    file list and at most ``cache`` photos at the working size are held (160 px: ~0.2 MB each), so a corpus
    of any size (COCO's 118,000 photos) streams from disk, read in place, and a small one is decoded once.

    A file that cannot be read is skipped with a warning (once) and the next one in the list stands in, so
    a damaged photo in a large corpus costs one picture, not the training.
    """

    def __init__(self, files: Sequence[Path], size: int, max_side: int, cache: int = 256):
        if not files:
            raise StyleError("a fast net's training corpus (style.fast_train_dir) has no images")
        self.files, self.size, self.max_side, self.cache = list(files), size, max_side, cache
        self.skipped: set[Path] = set()
        self._held: dict[Path, torch.Tensor] = {}  # the most recently read photos, oldest first

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:  # type: ignore[override]
        """Photo ``i`` (1, 3, h, w) with its long side ``size``; a bad one gives way to the next good one."""
        for k in range(len(self.files)):
            f = self.files[(i + k) % len(self.files)]
            if f in self.skipped:
                continue
            if f in self._held:
                return self._held[f]
            try:
                photo = resize_long(load_image(f, self.max_side), self.size)
            except StyleError as err:
                self.skipped.add(f)
                log.warning("skipping %s in the training corpus: %s", f, err)
                continue
            self._held[f] = photo
            if len(self._held) > self.cache:
                del self._held[next(iter(self._held))]
            return photo
        raise StyleError("no image of the training corpus can be read")


def style_inputs(
    sp: StyleParams, blend: dict[str, float], root: Path, *, check_contents: bool = True
) -> tuple[list[Path], list[tuple[torch.Tensor, float]]]:
    """One style's inputs under ``root``: the content photos and the blended style images.

    Args:
        sp: style params (``content_dir`` / ``style_dir`` relative to ``root``, ``max_side``).
        blend: {style file stem: weight}, one entry of ``style.styles``.
        root: the project root.
        check_contents: fail on an empty content folder and load every photo once, so that a bad file is
            reported before any work starts (a stage's setup); off to rebuild a job that setup checked, or
            when the caller loads them all itself through :func:`load_contents`.

    Returns:
        (content files, [(style image (1, 3, H, W) in [0, 1], blend weight)]).

    Raises:
        StyleError: no content photos, a missing style, or an unreadable image (named in the message).
    """
    contents = list_images(root / sp.content_dir)
    if check_contents:
        for _ in load_contents(contents, sp):  # every photo must load before any work starts
            pass
    styles = [(load_image(f, sp.max_side), w) for f, w in style_files(root / sp.style_dir, blend)]
    return contents, styles
