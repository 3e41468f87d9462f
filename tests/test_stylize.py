import pytest
import torch
from PIL import Image

from ganops.config import StyleParams
from ganops.losses import gram, style_loss, tv_loss
from ganops.models.style import StyleWeightsError, TransformerConfig, TransformerNet, build_vgg
from ganops.stylize import (
    StyleError,
    fast_stylize,
    gatys,
    keep_luminance,
    load_image,
    match_colors,
    print_ladder,
    to_yiq,
    train_fast,
)

P = StyleParams(
    weights="random", size=32, steps=25, style_layers={"relu1_1": 1.0, "relu2_1": 1.0, "relu3_1": 1.0}
)


@pytest.fixture(scope="module")
def vgg():
    return build_vgg("random", [P.content_layer, *P.style_layers], seed=0)


def test_gram_known_values():
    f = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 2, 1, 2)  # C=2 channels, 2 pixels
    # rows (1, 2) and (3, 4): dots 5, 11, 25, normalised by C*H*W = 4
    assert torch.allclose(gram(f), torch.tensor([[[5.0, 11.0], [11.0, 25.0]]]) / 4)


def test_tv_known_values():
    x = torch.zeros(1, 1, 3, 3)
    assert tv_loss(x).item() == 0
    x[..., :, 2] = 1.0  # a vertical edge: horizontal diffs (0, 1) per row -> mean 0.5; vertical diffs 0
    assert tv_loss(x).item() == pytest.approx(0.5)


def test_style_loss_zero_at_target():
    feats = {"a": torch.rand(1, 4, 5, 5)}
    assert style_loss(feats, {"a": gram(feats["a"])}, {"a": 1.0}).item() == pytest.approx(0, abs=1e-9)


def test_truncated_after_last_layer(vgg):
    assert len(vgg.body) == 23 and vgg.name == "vgg19-random-seed0"  # through relu4_2 (index 22)
    out = vgg(torch.rand(1, 3, 32, 32))
    assert set(out) == {"relu4_2", "relu1_1", "relu2_1", "relu3_1"}


@pytest.mark.parametrize("init,opt,lr", [("content", "lbfgs", 1.0), ("noise", "adam", 0.05)])
def test_gatys_lowers_the_loss(vgg, init, opt, lr):
    torch.manual_seed(0)
    content, style = torch.rand(1, 3, 24, 32), torch.rand(1, 3, 32, 32)
    r = gatys(content, [(style, 1.0)], vgg, P.model_copy(update={"init": init, "optimizer": opt, "lr": lr}))
    assert r.image.shape == (1, 3, 24, 32) and r.image.min() >= 0 and r.image.max() <= 1
    assert r.losses["total"] < 0.5 * r.start_total and r.evaluations == 25


def test_multiscale_and_blend(vgg):
    content = torch.rand(1, 3, 32, 32)
    styles = [(torch.rand(1, 3, 32, 32), 0.7), (torch.rand(1, 3, 16, 16), 0.3)]
    r = gatys(content, styles, vgg, P.model_copy(update={"scales": [0.5, 1.0], "steps": 10}))
    assert r.image.shape == (1, 3, 32, 32) and r.evaluations == 20


def test_print_ladder_doubles_from_the_working_size_to_the_print_size(vgg):
    assert print_ladder(160, 512, 80, 20) == [(160, 80), (320, 20), (512, 20)]
    assert print_ladder(160, 1024, 80, 20) == [(160, 80), (320, 20), (640, 20), (1024, 20)]
    assert print_ladder(160, 160, 80, 20) == [(160, 80)] and print_ladder(90, 90, 80, 20) == [(90, 80)]
    # gatys follows a ladder: the result at its last side, the evaluations each scale was given
    content = torch.rand(1, 3, 30, 40)
    r = gatys(content, [(torch.rand(1, 3, 32, 32), 1.0)], vgg, P, ladder=print_ladder(16, 40, 6, 3))
    assert r.image.shape == (1, 3, 30, 40) and r.evaluations == 6 + 3 + 3  # 16 -> 32 -> 40 px


def test_luminance_keeps_the_content_chroma(vgg):
    content = torch.rand(1, 3, 32, 32) * 0.5 + 0.25  # moderate colours: clamping to [0, 1] rarely bites
    r = gatys(
        content, [(torch.rand(1, 3, 32, 32), 1.0)], vgg, P.model_copy(update={"preserve_color": "luminance"})
    )
    iq_out, iq_content = to_yiq(r.image)[:, 1:], to_yiq(content)[:, 1:]
    assert (iq_out - iq_content).abs().mean() < 0.01
    raw = gatys(content, [(torch.rand(1, 3, 32, 32), 1.0)], vgg, P)
    assert (to_yiq(raw.image)[:, 1:] - iq_content).abs().mean() > (iq_out - iq_content).abs().mean()
    same = keep_luminance(content, content)
    assert torch.allclose(same, content, atol=1e-4)


def test_match_colors_moves_style_stats_to_content():
    style = torch.rand(1, 3, 16, 16) * 0.3  # dark
    content = torch.rand(1, 3, 16, 16) * 0.3 + 0.6  # bright
    m = match_colors(style, content)
    assert torch.allclose(m.mean(dim=(2, 3)), content.mean(dim=(2, 3)), atol=0.02)


@pytest.mark.parametrize("h,w", [(32, 32), (37, 50), (64, 24)])
def test_fast_net_keeps_the_size(h, w):
    net = TransformerNet().eval()
    assert fast_stylize(net, torch.rand(1, 3, h, w)).shape == (1, 3, h, w)


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_train_fast_lowers_its_loss(vgg, precision):
    seen = []
    p = P.model_copy(update={"fast_steps": 20, "fast_batch_size": 2, "fast_width": 8, "fast_lr": 5e-3,
                             "fast_precision": precision})  # fmt: skip
    net = train_fast([torch.rand(1, 3, 40, 48)], [(torch.rand(1, 3, 32, 32), 1.0)], vgg, p,
                     on_metrics=lambda s, m: seen.append(m["fast_total"]))  # fmt: skip
    assert not net.training and len(seen) == 2 and seen[-1] < seen[0]
    assert net.precision == precision and next(net.parameters()).dtype == torch.float32  # weights stay fp32


def test_fast_content_scale_weighs_the_photo_in_training(vgg):
    g = torch.Generator().manual_seed(0)
    photos, style = [torch.rand(1, 3, 40, 48, generator=g)], [(torch.rand(1, 3, 32, 32, generator=g), 1.0)]
    content = {}
    for scale in (0.0, 1e5):  # random VGG: style weighs 1e5, content 1
        p = P.model_copy(update={"fast_steps": 20, "fast_batch_size": 2, "fast_width": 8, "fast_lr": 5e-3,
                                 "fast_precision": "fp32", "fast_content_scale": scale})  # fmt: skip
        seen: list[float] = []
        train_fast(photos, style, vgg, p, on_metrics=lambda _, m, out=seen: out.append(m["fast_content"]))
        content[scale] = seen[-1]
    assert content[1e5] < 0.5 * content[0.0]  # the photo kept: the net learned the content


def test_train_fast_takes_whole_photos_at_the_working_size(vgg, monkeypatch):
    # photos of two shapes: each step's draw goes through the net one batch per shape, each photo whole,
    # resized as gatys sizes its content (long side = style.size)
    seen: list[tuple[int, ...]] = []
    forward = TransformerNet.forward
    monkeypatch.setattr(
        TransformerNet, "forward", lambda net, x: seen.append(tuple(x.shape)) or forward(net, x)
    )
    p = P.model_copy(update={"fast_steps": 3, "fast_batch_size": 4, "fast_width": 4})
    train_fast(
        [torch.rand(1, 3, 40, 64), torch.rand(1, 3, 96, 72)], [(torch.rand(1, 3, 32, 32), 1.0)], vgg, p
    )
    assert {shape[1:] for shape in seen} == {(3, 20, 32), (3, 32, 24)}  # 40x64 and 96x72 at long side 32
    assert sum(shape[0] for shape in seen) == 3 * 4  # fast_batch_size photos per step


def test_load_image_errors_name_the_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    good = tmp_path / "big.png"
    Image.new("RGB", (300, 100), (255, 0, 0)).save(good)
    for name, msg in (("empty.png", "empty file"), ("bad.jpg", "not an image"), ("nope.png", "no such file")):
        with pytest.raises(StyleError, match=f"{name}: {msg}"):
            load_image(tmp_path / name, 64)
    x = load_image(good, 60)  # larger than max_side: downscaled, never kept huge
    assert x.shape == (1, 3, 20, 60) and x[0, 0].mean() > 0.99


def test_pretrained_without_cache_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(StyleWeightsError) as e:
        build_vgg("pretrained", ["relu1_1"], download=False)
    assert "vgg19-dcbb9e9d.pth" in str(e.value) and str(tmp_path / "hub" / "checkpoints") in str(e.value)


def test_blend_target_is_the_weighted_sum_of_the_style_grams(vgg):
    from ganops.stylize import resize_long, style_targets

    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(1, 3, 40, 40, generator=g), torch.rand(1, 3, 24, 32, generator=g)
    layers = list(P.style_layers)
    blended = style_targets([(a, 3.0), (b, 1.0)], vgg, layers, 32)  # weights normalised: 0.75 / 0.25
    only_a = style_targets([(a, 1.0)], vgg, layers, 32)
    with torch.no_grad():
        fa, fb = vgg(resize_long(a, 32)), vgg(resize_long(b, 32))
    for n in layers:
        want = 0.75 * gram(fa[n]) + 0.25 * gram(fb[n])
        torch.testing.assert_close(blended[n], want)
        torch.testing.assert_close(only_a[n], gram(fa[n]))
        assert not torch.allclose(blended[n], only_a[n])  # the second style counts


def test_style_scale_sets_the_style_image_size_and_so_the_gram_target(vgg, monkeypatch):
    import ganops.stylize as stylize

    seen = []
    original = stylize.style_targets

    def spy(styles, vgg_, layers, long_side):
        out = original(styles, vgg_, layers, long_side)
        seen.append((long_side, out))
        return out

    monkeypatch.setattr(stylize, "style_targets", spy)
    g = torch.Generator().manual_seed(1)
    content, style = torch.rand(1, 3, 32, 32, generator=g), torch.rand(1, 3, 64, 64, generator=g)
    for scale in (1.0, 0.5):
        gatys(
            content,
            [(style, 1.0)],
            vgg,
            P.model_copy(update={"scales": [1.0], "steps": 1, "style_scale": scale}),
        )
    (side1, g1), (side2, g2) = seen
    assert (side1, side2) == (32, 16)
    assert any(not torch.allclose(g1[n], g2[n]) for n in P.style_layers)


def _photo_folder(folder, n: int = 4):
    from PIL import Image

    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        w, h = (48, 36) if i % 2 else (36, 48)  # both orientations
        px = (torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(px).save(folder / f"p{i}.png")
    return sorted(folder.iterdir())


def test_a_corpus_is_read_from_disk_at_each_draw_and_skips_a_bad_photo(tmp_path, caplog):
    from ganops.stylize import PhotoCorpus

    files = _photo_folder(tmp_path / "corpus")
    corpus = PhotoCorpus(files, size=24, max_side=1024, cache=2)
    assert len(corpus) == 4 and corpus[0].shape == (1, 3, 24, 18) and corpus[1].shape == (1, 3, 18, 24)
    from PIL import Image

    Image.new("RGB", (36, 48), (255, 0, 0)).save(files[0])  # changed on disk after the corpus read it
    assert corpus[0][0, 0].mean() < 0.99  # still held (2 photos at most): read once
    corpus[3]  # a third photo pushes the oldest out
    assert corpus[0][0, 0].mean() > 0.99 and corpus[0][0, 1].max() < 0.01  # read from disk again
    files[2].write_bytes(b"\x89PNG broken")
    assert torch.equal(corpus[2], corpus[3])  # the next good photo stands in
    assert "skipping" in caplog.text and "p2.png" in caplog.text
    with pytest.raises(StyleError, match="has no images"):
        PhotoCorpus([], size=24, max_side=1024)


def test_training_on_a_corpus_is_training_on_the_same_photos_in_memory(vgg, tmp_path):
    # the streamed path changes where the photos come from, not what the net learns: same seed, same weights
    from ganops.stylize import PhotoCorpus, list_images

    files = _photo_folder(tmp_path / "corpus", 3)
    p = P.model_copy(
        update={"fast_steps": 4, "fast_batch_size": 2, "fast_width": 4, "fast_precision": "fp32"}
    )
    style = [(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)), 1.0)]
    streamed = train_fast(PhotoCorpus(list_images(tmp_path / "corpus"), p.size, p.max_side), style, vgg, p)
    held = train_fast([load_image(f, p.max_side) for f in files], style, vgg, p)
    a, b = streamed.state_dict(), held.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_fast_net_runs_at_the_scale_it_learned_and_returns_the_photos_size(tmp_path):
    from ganops.artifacts import save_folder
    from ganops.models.style import load_style_net
    from ganops.stylize import fast_stylize_at_scale, resize_long

    torch.manual_seed(0)
    net = TransformerNet(TransformerConfig(width=4)).eval()
    x = torch.rand(1, 3, 40, 56)
    with torch.no_grad():
        assert torch.equal(fast_stylize_at_scale(net, x), fast_stylize(net, x))  # no size recorded: as given
        net.working_size = 16
        y = fast_stylize_at_scale(net, x)
        small = fast_stylize(net, resize_long(x, 16))  # (1, 3, 11, 16): what the net draws at its scale
        assert y.shape == x.shape and small.shape[-1] == 16
        back = torch.nn.functional.interpolate(small, size=(40, 56), mode="bicubic", align_corners=False)
        assert torch.allclose(y, back.clamp(0, 1)) and not torch.allclose(y, fast_stylize(net, x))
    # the size travels in the model folder the stage writes (and serving loads)
    save_folder(
        tmp_path / "net", {"transformer.pt": net.state_dict()}, {"model": net.cfg.to_dict(), "size": 16}
    )
    assert load_style_net(tmp_path / "net").working_size == 16
    save_folder(tmp_path / "old", {"transformer.pt": net.state_dict()}, {"model": net.cfg.to_dict()})
    assert load_style_net(tmp_path / "old").working_size is None
