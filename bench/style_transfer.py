"""Benchmarks of ganops' style transfer, three subcommands (results in bench/results/, BENCHMARKS.md):

    python bench/style_transfer.py sheets                  # labelled sheets + losses per feature extractor
    python bench/style_transfer.py fast                    # fast-net training step vs pytorch/examples; loss vs Gatys
    python bench/style_transfer.py fast --train-steps 1500 --corpus ../shared/data/own-photos --held-out DIR
    python bench/style_transfer.py fast --rounds 0 --size 160 --net models/style/starry_night --held-out DIR
    python bench/style_transfer.py gatys                   # Gatys vs the PyTorch tutorial's recipe (time, loss)
    python bench/style_transfer.py colour --photos DIR     # colour fidelity of variants (Lab distance, chroma)

`sheets`: every photo x painting through Gatys with each extractor's calibrated default weights
(config.CALIBRATED_WEIGHTS) at the demo's size and evaluations; one labelled sheet per extractor
(bench/results/style_sheet_<weights>.png) and the final content / style / TV losses and seconds per pair.
Photos: scikit-learn's two samples, plus any --photos folder; paintings: data/paintings.

`fast`: seconds per training step of ganops' fast net (`train_fast`: TransformerNet width 32, VGG19 to
relu5_1, content relu4_2) vs the pytorch/examples fast_neural_style training loop (bench/
fast_neural_style_ref.py: the same TransformerNet shape, VGG16 to relu4_3, content relu2_2), the same
whole photos at the same size and batch, alternating rounds in one process; then a fast net trained on
the photos, its output's loss vs Gatys's final loss on each photo with the same weights (one loss function
scores both), also on --held-out photos it never saw. `--net` scores a net the stylize stage trained
(`style.method: fast`, e.g. on a corpus: `style.fast_train_dir`) instead of training one; `--rounds 0`
skips the step timing. Sheets: bench/results/style_fast_<tag>.jpg (the demo photos) and
style_fast_<tag>_held_out.jpg (all of them: local only, the held-out photos may not ship).

`gatys` (Gatys vs the PyTorch tutorial, same weights): reference = the full VGG19 stack every evaluation,
L-BFGS stepped until 300 evaluations, pixels clamped inside the closure; ganops = `gatys` with its
coarse-to-fine schedule (--scales, --steps evaluations per scale), VGG cut after the deepest layer used.
Both final images are scored with one loss function at full size. Also fast-net inference time.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.models import VGG19_Weights, vgg19

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import fast_neural_style_ref as fns_ref  # noqa: E402
from ganops.config import StyleParams  # noqa: E402
from ganops.losses import content_loss, gram, style_loss, tv_loss  # noqa: E402
from ganops.models.style import VGG_LAYERS, TransformerNet, build_vgg, load_style_net  # noqa: E402
from ganops.sheet import SheetStyle, labelled_sheet  # noqa: E402
from ganops.stylize import (  # noqa: E402
    PhotoCorpus,
    fast_precision,
    fast_stylize,
    gatys,
    list_images,
    load_image,
    resize_long,
    train_fast,
)

RESULTS = ROOT / "bench/results"
LAYERS = {"relu1_1": 1.0, "relu2_1": 1.0, "relu3_1": 1.0, "relu4_1": 1.0, "relu5_1": 1.0}
CONTENT = "relu4_2"


def mosaic(size: int = 256, cells: int = 60, seed: int = 0) -> np.ndarray:
    """The texture the `gatys` comparison was measured with: Voronoi tiles with dark grout, (size, size, 3)."""
    rng = np.random.default_rng(seed)
    pts = rng.uniform(0, size, (cells, 2))
    colours = rng.integers(40, 256, (cells, 3))
    y, x = np.mgrid[0:size, 0:size]
    d = np.hypot(x[..., None] - pts[:, 0], y[..., None] - pts[:, 1])  # (size, size, cells)
    order = np.sort(d, axis=-1)
    img = colours[d.argmin(-1)].astype(np.float64)
    img[(order[..., 1] - order[..., 0]) < 2.0] = 25  # grout between tiles
    return img.astype(np.uint8)


def full_stack(weights: str, seed: int) -> torch.nn.Sequential:
    if weights == "random":
        torch.manual_seed(seed)
        f = vgg19(weights=None).features
    else:
        f = vgg19(weights=VGG19_Weights.IMAGENET1K_V1).features
    for m in f:
        if isinstance(m, torch.nn.ReLU):
            m.inplace = False
    return f.eval().requires_grad_(False)


def reference(content, style, feats, p: StyleParams, evals: int) -> tuple[torch.Tensor, float]:
    """The tutorial's loop: full stack each evaluation, L-BFGS stepped until ``evals`` evaluations."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    at = {VGG_LAYERS[n]: n for n in [CONTENT, *LAYERS]}

    def run(x: torch.Tensor) -> dict[str, torch.Tensor]:
        out, h = {}, (x - mean) / std
        for i, m in enumerate(feats):  # every layer, as the tutorial's Sequential does
            h = m(h)
            if i in at:
                out[at[i]] = h
        return out

    with torch.no_grad():
        c_feat = run(content)[CONTENT]
        s = run(style)
        grams = {n: gram(s[n]) for n in LAYERS}
    x = content.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x])
    count = [0]
    t0 = time.perf_counter()
    while count[0] < evals:

        def closure() -> torch.Tensor:
            with torch.no_grad():
                x.clamp_(0, 1)
            opt.zero_grad()
            f = run(x)
            loss = (p.content_weight * content_loss(f[CONTENT], c_feat) + p.style_weight * style_loss(f, grams, LAYERS)
                    + p.tv_weight * tv_loss(x))  # fmt: skip
            loss.backward()
            count[0] += 1
            return loss

        opt.step(closure)
    with torch.no_grad():
        x.clamp_(0, 1)
    return x.detach(), time.perf_counter() - t0


def score(x, content, style, vgg, p: StyleParams) -> float:
    """One loss function for both results, at full size."""
    with torch.no_grad():
        f, c, s = vgg(x), vgg(content)[CONTENT], vgg(style)
        grams = {n: gram(s[n]) for n in LAYERS}
        return float(p.content_weight * content_loss(f[CONTENT], c) + p.style_weight * style_loss(f, grams, LAYERS)
                     + p.tv_weight * tv_loss(x))  # fmt: skip


def gatys_vs_tutorial(a: argparse.Namespace) -> dict:
    from sklearn.datasets import load_sample_images

    content = torch.from_numpy(load_sample_images().images[0] / 255.0).float().permute(2, 0, 1)[None]
    content = resize_long(content, a.size)
    style = torch.from_numpy(mosaic(a.size) / 255.0).float().permute(2, 0, 1)[None]
    p = StyleParams(
        weights=a.weights, size=a.size, content_layer=CONTENT, style_layers=LAYERS, style_weight=1e6
    )
    vgg = build_vgg(a.weights, [CONTENT, *LAYERS])

    ref_img, ref_s = reference(content, style, full_stack(a.weights, 0), p, a.ref_evals)
    t0 = time.perf_counter()
    r = gatys(content, [(style, 1.0)], vgg, p.model_copy(update={"scales": a.scales, "steps": a.steps}))
    ours_s, ours_img, evals = time.perf_counter() - t0, r.image, r.evaluations
    ref_loss, ours_loss = score(ref_img, content, style, vgg, p), score(ours_img, content, style, vgg, p)

    net = TransformerNet().eval()
    fast_stylize(net, content)  # warm-up
    t = time.perf_counter()
    for _ in range(5):
        fast_stylize(net, content)
    fast_s = (time.perf_counter() - t) / 5

    res = {
        "command": "python " + " ".join(sys.argv),
        "weights": vgg.name, "size": list(content.shape[-2:]),
        "reference": {"seconds": ref_s, "evaluations": a.ref_evals, "final_loss": ref_loss},
        "ganops": {"seconds": ours_s, "evaluations": evals, "scales": a.scales, "steps": a.steps,
                   "final_loss": ours_loss},
        "time_ratio": ours_s / ref_s, "loss_ratio": ours_loss / ref_loss,
        "fast_net_seconds_per_image": fast_s,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
    }  # fmt: skip
    return res


# ----------------------------------------------------------------------------- sheets per extractor


def save_jpg(img, path: Path) -> None:  # noqa: ANN001 - a PIL image
    """Sheets are committed with the results: JPEG (quality 85) keeps them ~100 KB."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=85)


def photos(extra: Path | None) -> list[tuple[str, torch.Tensor]]:
    """The demo's photos (scikit-learn's two samples, shipped in data/photos/), then those in ``extra``."""
    out = [
        (f.stem, load_image(f, 512)) for f in list_images(Path(__file__).resolve().parents[1] / "data/photos")
    ]
    return out + [(f.stem, load_image(f, 512)) for f in (list_images(extra) if extra else [])]


def pair_score(x: torch.Tensor, content: torch.Tensor, style: torch.Tensor, vgg, p: StyleParams) -> dict:  # noqa: ANN001
    """Gatys's objective for ``x`` at the working size (``p.size`` long side), term by term."""
    with torch.no_grad():
        c = resize_long(content, p.size)
        x = torch.nn.functional.interpolate(x, size=c.shape[-2:], mode="bilinear", align_corners=False)
        s = vgg(resize_long(style, round(p.size * p.style_scale)))
        grams = {n: gram(s[n]) for n in p.style_layers}
        f = vgg(x)
        terms = {"content": p.content_weight * content_loss(f[p.content_layer], vgg(c)[p.content_layer]).item(),
                 "style": p.style_weight * style_loss(f, grams, p.style_layers).item(),
                 "tv": p.tv_weight * tv_loss(x).item()}  # fmt: skip
    return terms | {"total": sum(terms.values())}


def sheets(a: argparse.Namespace) -> dict:
    contents = photos(a.photos)
    paintings = [(f.stem, load_image(f, 512)) for f in list_images(a.paintings)]
    out: dict = {}
    for weights in a.weights:
        # the calibrated weights unless --style-weight / --tv-weight override them (a calibration sweep)
        given = {"style_weight": a.style_weight, "tv_weight": a.tv_weight}
        p = StyleParams.model_validate({"weights": weights, "size": a.size, "steps": a.steps, **given})
        vgg = build_vgg(weights, [p.content_layer, *p.style_layers])
        columns, pairs, t_all = [], {}, time.perf_counter()
        for name, style in paintings:
            col = SheetStyle(name, [(name, style, 1.0)])
            for photo, content in contents:
                t0 = time.perf_counter()
                r = gatys(content, [(style, 1.0)], vgg, p)
                pairs[f"{name}/{photo}"] = {**{k: round(v, 5) for k, v in r.losses.items()},
                                            "seconds": round(time.perf_counter() - t0, 2)}  # fmt: skip
                col.results.append(r.image)
                print(weights, name, photo, pairs[f"{name}/{photo}"], flush=True)
            columns.append(col)
        seconds = time.perf_counter() - t_all
        caption = (f"{vgg.name}\ncontent {p.content_weight:g}\nstyle {p.style_weight:g}\ntv {p.tv_weight:g}\n"
                   f"{p.size} px, {p.steps} evals\n{seconds:.0f} s in all")  # fmt: skip
        png = a.out.parent / f"{a.out.stem.replace('style_sheets', 'style_sheet')}_{weights}.jpg"
        save_jpg(labelled_sheet(contents, columns, tile=a.tile, caption=caption), png)
        out[weights] = {"extractor": vgg.name, "weights": [p.content_weight, p.style_weight, p.tv_weight],
                        "sheet": str(png.relative_to(ROOT)), "seconds": round(seconds, 1), "pairs": pairs}  # fmt: skip
    return {"size": a.size, "steps": a.steps, "per_extractor": out}


# ----------------------------------------------------------------------------- colour fidelity

COLOUR_VARIANTS = {  # style.* overrides of params.yaml's style group
    "content": {"init": "content"},  # start from the photo itself (the default before 2026-12-05)
    "palette": {"init": "palette"},  # start from the photo in the painting's colours
    "tv1": {"tv_weight": 1.0},  # a tenth of the calibrated smoothness
}


def colour(a: argparse.Namespace) -> dict:
    """Every photo x painting through Gatys per variant: the Lab colour distance to the painting (and to
    the photo), the chroma of result / painting / photo, and the loss terms under the default weights (one
    scale for every variant). One sheet per variant of the demo's photos (the only ones that may ship)."""
    from ganops.stages.style import colour_metrics

    demo = photos(None)
    contents = demo + [(f.stem, load_image(f, 512)) for f in (list_images(a.photos) if a.photos else [])]
    paintings = [(f.stem, load_image(f, 512)) for f in list_images(a.paintings)]
    base = StyleParams(size=a.size, steps=a.steps)
    vgg = build_vgg(base.weights, [base.content_layer, *base.style_layers])
    out: dict = {}
    for variant in a.variants:
        p = StyleParams.model_validate(base.model_dump() | COLOUR_VARIANTS[variant])
        columns, pairs = [], {}
        for name, style in paintings:
            col = SheetStyle(name, [(name, style, 1.0)])
            for photo, content in contents:
                r = gatys(content, [(style, 1.0)], vgg, p)
                m = colour_metrics(r.image, resize_long(content, a.size), [(style, 1.0)])
                pairs[f"{name}/{photo}"] = {k: round(v, 3) for k, v in m.items()} | {
                    f"loss_{k}": round(v, 4)
                    for k, v in pair_score(r.image, content, style, vgg, base).items()
                }
                if photo in {n for n, _ in demo}:
                    col.results.append(r.image)
                print(variant, name, photo, pairs[f"{name}/{photo}"], flush=True)
            columns.append(col)
        rows = list(pairs.values())
        mean = {k: round(statistics.mean(r[k] for r in rows), 3) for k in rows[0]}
        png = RESULTS / f"style_colour_{variant}.jpg"
        caption = (
            f"{variant}\n{p.size} px, {p.steps} evals\ncolour distance\n{mean['colour_distance']:.1f} (mean)"
        )
        save_jpg(labelled_sheet(demo, columns, tile=a.tile, caption=caption), png)
        out[variant] = {"overrides": COLOUR_VARIANTS[variant], "mean": mean, "sheet": str(png.relative_to(ROOT)),
                        "pairs": pairs}  # fmt: skip
    return {"size": a.size, "steps": a.steps, "variants": out}


# ----------------------------------------------------------------------------- fast nets


def photo_batches(
    contents: list[torch.Tensor], size: int, batch: int, n: int, seed: int
) -> list[torch.Tensor]:
    """``n`` batches of ``batch`` whole photos drawn at random, resized to long side ``size`` (as train_fast
    takes them), cut to sides divisible by 4 (the example's net needs them); all photos must share a shape."""
    g = torch.Generator().manual_seed(seed)
    pool = [resize_long(c, size) for c in contents]
    pool = [c[..., : c.shape[-2] // 4 * 4, : c.shape[-1] // 4 * 4] for c in pool]
    return [
        torch.cat([pool[i] for i in torch.randint(len(pool), (batch,), generator=g).tolist()])
        for _ in range(n)
    ]


def fast(a: argparse.Namespace) -> dict:
    named = photos(None)
    contents = [c for _, c in named]
    style = load_image(a.paintings / f"{a.style}.jpg", 512)
    p = StyleParams.model_validate({"weights": a.weights[0], "size": a.size, "steps": a.steps,
                                    "fast_batch_size": a.batch})  # fmt: skip
    vgg = build_vgg(p.weights, [p.content_layer, *p.style_layers])
    res: dict = {"style": a.style, "size": a.size, "batch": a.batch, "extractor": vgg.name,
                 "precision": fast_precision(p.fast_precision)}  # fmt: skip
    if a.rounds:
        res |= step_times(a, contents, style, vgg, p)
    if not (a.train_steps or a.net):
        return res
    # (2) quality: a fast net (trained here, or by the stylize stage: --net) vs Gatys on each photo, one
    # scorer for both
    if a.net:
        net = load_style_net(a.net)
        made = json.loads((a.net / "config.json").read_text())
        if made.get("size") != a.size or made.get("extractor") != vgg.name:
            raise SystemExit(f"{a.net}: trained at {made.get('size')} px with {made.get('extractor')}; "
                             f"score it with --size {made.get('size')} and its weights")  # fmt: skip
        # folder names only: the results are published, the paths are this machine's
        trained = made.get("trained_on") or {"folder": "?", "photos": 0}  # a net saved before it was recorded
        res["trained_on"] = trained | {"folder": Path(trained["folder"]).name}
        res["net"] = a.net.name
    else:
        q = p.model_copy(update={"fast_steps": a.train_steps})
        t0 = time.perf_counter()
        # --corpus: the net trains on that folder (subfolders too), streamed as the stage does
        # (style.fast_train_dir); the demo's photos are then photos it never saw too
        train_on = (
            PhotoCorpus(list_images(a.corpus, recursive=True), q.size, q.max_side) if a.corpus else contents
        )
        net = train_fast(train_on, [(style, 1.0)], vgg, q, progress=True)
        res["trained_on"] = {"folder": a.corpus.name if a.corpus else "data/photos", "photos": len(train_on)}
        res["train_seconds"] = time.perf_counter() - t0
    res["pairs"] = {}
    held_out = (
        [(f"{f.stem} (held out)", load_image(f, 512)) for f in list_images(a.held_out)] if a.held_out else []
    )
    rows: list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for photo, c in named + held_out:
        fast_img = fast_stylize(net, resize_long(c, p.size))
        g = gatys(c, [(style, 1.0)], vgg, p)
        f_loss, g_loss = pair_score(fast_img, c, style, vgg, p), pair_score(g.image, c, style, vgg, p)
        res["pairs"][photo] = {
            "fast": f_loss,
            "gatys": g_loss,
            "loss_ratio": f_loss["total"] / g_loss["total"],
        }
        print(photo, res["pairs"][photo], flush=True)
        rows.append((photo, c, fast_img, g.image))
    ratios = [v["loss_ratio"] for v in res["pairs"].values()]
    res["loss_ratio_max"], res["loss_ratio_mean"] = max(ratios), statistics.mean(ratios)
    trained = (
        f"fast {a.train_steps} steps" if a.train_steps else f"fast: {res['trained_on']['photos']} photos"
    )
    caption = f"{vgg.name}\n{trained}\nvs gatys {p.steps} evals"
    # held-out photos are scored but not the project's to publish: their sheet stays local (git ignores it)
    for name, these in (("", [r for r in rows if "held out" not in r[0]]), ("_held_out", rows)):
        sheet = labelled_sheet([(r[0], r[1]) for r in these],
                               [SheetStyle("fast", [(a.style, style, 1.0)], [r[2] for r in these]),
                                SheetStyle("gatys", [(a.style, style, 1.0)], [r[3] for r in these])],
                               tile=256, caption=caption)  # fmt: skip
        save_jpg(sheet, RESULTS / f"style_fast_{a.tag or a.style}{name}.jpg")
    return res


def step_times(a: argparse.Namespace, contents: list[torch.Tensor], style, vgg, p: StyleParams) -> dict:  # noqa: ANN001
    """(1) Seconds per training step: alternating rounds, the same photos, size and batch; the reference gets
    its batches ready-made (its data loading is not timed), ganops' train_fast draws its own in the step."""
    batches = photo_batches(contents, a.size, a.batch, a.time_steps, seed=1)
    ref_s, ours_s = [], []
    for _ in range(a.rounds):
        ref_s.append(fns_ref.train_steps([b * 255 for b in batches], resize_long(style, a.size) * 255))
        t0 = time.perf_counter()
        train_fast(contents, [(style, 1.0)], vgg, p.model_copy(update={"fast_steps": a.time_steps}))
        ours_s.append((time.perf_counter() - t0) / a.time_steps)
        print(f"step seconds: reference {ref_s[-1]:.3f}, ganops {ours_s[-1]:.3f}", flush=True)
    ref_m, ours_m = statistics.median(ref_s), statistics.median(ours_s)
    return {"step_seconds": {"reference": ref_m, "ganops": ours_m, "rounds": a.rounds,
                             "steps_per_round": a.time_steps},
            "speed_ratio": ref_m / ours_m}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gatys", help="Gatys vs the PyTorch tutorial's recipe")
    g.add_argument("--size", type=int, default=256)
    g.add_argument("--weights", choices=["random", "pretrained", "caffe-q8"], default="random")
    g.add_argument("--ref-evals", type=int, default=300)
    g.add_argument("--scales", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    g.add_argument("--steps", type=int, default=110, help="ganops: loss evaluations per scale")
    g.add_argument("--out", type=Path, default=RESULTS / "style_transfer.json")
    for name, size, out in (("sheets", 160, "style_sheets.json"), ("fast", 128, "style_fast.json")):
        c = sub.add_parser(name)
        c.add_argument(
            "--weights", nargs="+", default=["caffe-q8", "random"] if name == "sheets" else ["caffe-q8"]
        )
        c.add_argument("--size", type=int, default=size, help="working size (fast: crop size)")
        c.add_argument("--steps", type=int, default=80, help="Gatys loss evaluations")
        c.add_argument("--paintings", type=Path, default=ROOT / "data/paintings")
        c.add_argument("--out", type=Path, default=RESULTS / out)
    sub.choices["sheets"].add_argument("--photos", type=Path, help="more content photos (a folder)")
    sub.choices["sheets"].add_argument("--tile", type=int, default=200)
    sub.choices["sheets"].add_argument("--style-weight", type=float, help="instead of the calibrated one")
    sub.choices["sheets"].add_argument("--tv-weight", type=float, help="instead of the calibrated one")
    c = sub.add_parser("colour", help="colour fidelity of Gatys variants")
    c.add_argument("--variants", nargs="+", default=list(COLOUR_VARIANTS), choices=list(COLOUR_VARIANTS))
    c.add_argument("--size", type=int, default=160)
    c.add_argument("--steps", type=int, default=80)
    c.add_argument("--paintings", type=Path, default=ROOT / "data/paintings")
    c.add_argument("--photos", type=Path, help="more content photos (numbers only, not on the sheets)")
    c.add_argument("--tile", type=int, default=160)
    c.add_argument("--out", type=Path, default=RESULTS / "style_colour.json")
    f = sub.choices["fast"]
    f.add_argument("--style", default="starry_night", help="painting (file stem in --paintings)")
    f.add_argument("--batch", type=int, default=4)
    f.add_argument("--time-steps", type=int, default=8, help="steps per timed round")
    f.add_argument("--rounds", type=int, default=3)
    f.add_argument(
        "--train-steps", type=int, default=0, help="> 0: also train a fast net and compare with Gatys"
    )
    f.add_argument("--held-out", type=Path, help="photos the fast net is not trained on, scored the same way")
    f.add_argument("--corpus", type=Path, help="train the net on this folder of photos (streamed) instead")
    f.add_argument(
        "--net", type=Path, help="score this saved net (models/style/<style>/) instead of training"
    )
    f.add_argument("--tag", help="sheet name: bench/results/style_fast_<tag>.jpg (default: the style)")
    a = ap.parse_args()
    torch.manual_seed(0)
    res = {"gatys": gatys_vs_tutorial, "sheets": sheets, "fast": fast, "colour": colour}[a.cmd](a)
    res |= {"command": "python " + " ".join(sys.argv), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "machine": platform.machine()}  # fmt: skip
    print(json.dumps(res, indent=2))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
