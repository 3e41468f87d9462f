"""The reference for fast-net training speed: pytorch/examples `fast_neural_style`, rewritten from its facts.

What that example does (neural_style/{vgg.py, transformer_net.py, utils.py, neural_style.py} train()):
VGG16 `features` cut into four slices ending at relu1_2, relu2_2, relu3_3, relu4_3 (weights frozen);
TransformerNet 32/64/128 channels, reflection-padded convs, InstanceNorm (affine), 5 residual blocks,
nearest-upsample + conv decoder, no output activation; inputs in 0..255, normalised per batch by
``normalize_batch`` (/255, ImageNet mean/std); each step runs the net, VGG on y (with grad) and on x
(frozen), content MSE at relu2_2, Gram (/ C*H*W) MSE at all four slices against the style Grams, Adam.

Only the step's cost matters here, so VGG16 has random weights (the same FLOPs as ImageNet's).
"""

from __future__ import annotations

import time
from collections import namedtuple

import torch
from torch import nn
from torchvision.models import vgg16


class Vgg16(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        f = vgg16(weights=None).features
        self.slice1, self.slice2, self.slice3, self.slice4 = f[:4], f[4:9], f[9:16], f[16:23]
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor):  # noqa: ANN201 - the example's namedtuple
        h1 = self.slice1(x)
        h2 = self.slice2(h1)
        h3 = self.slice3(h2)
        h4 = self.slice4(h3)
        return namedtuple("VggOutputs", ["relu1_2", "relu2_2", "relu3_3", "relu4_3"])(h1, h2, h3, h4)


class ConvLayer(nn.Module):
    def __init__(self, a: int, b: int, k: int, stride: int):
        super().__init__()
        self.pad, self.conv = nn.ReflectionPad2d(k // 2), nn.Conv2d(a, b, k, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pad(x))


class ResidualBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.in1 = ConvLayer(c, c, 3, 1), nn.InstanceNorm2d(c, affine=True)
        self.conv2, self.in2 = ConvLayer(c, c, 3, 1), nn.InstanceNorm2d(c, affine=True)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.in2(self.conv2(self.relu(self.in1(self.conv1(x))))) + x


class UpsampleConvLayer(nn.Module):
    def __init__(self, a: int, b: int, k: int, stride: int, upsample: int):
        super().__init__()
        self.upsample, self.conv = upsample, ConvLayer(a, b, k, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.interpolate(x, mode="nearest", scale_factor=self.upsample))


class TransformerNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.in1 = ConvLayer(3, 32, 9, 1), nn.InstanceNorm2d(32, affine=True)
        self.conv2, self.in2 = ConvLayer(32, 64, 3, 2), nn.InstanceNorm2d(64, affine=True)
        self.conv3, self.in3 = ConvLayer(64, 128, 3, 2), nn.InstanceNorm2d(128, affine=True)
        self.res = nn.Sequential(*[ResidualBlock(128) for _ in range(5)])
        self.deconv1, self.in4 = UpsampleConvLayer(128, 64, 3, 1, 2), nn.InstanceNorm2d(64, affine=True)
        self.deconv2, self.in5 = UpsampleConvLayer(64, 32, 3, 1, 2), nn.InstanceNorm2d(32, affine=True)
        self.deconv3 = ConvLayer(32, 3, 9, 1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.in1(self.conv1(x)))
        y = self.relu(self.in2(self.conv2(y)))
        y = self.relu(self.in3(self.conv3(y)))
        y = self.res(y)
        y = self.relu(self.in4(self.deconv1(y)))
        y = self.relu(self.in5(self.deconv2(y)))
        return self.deconv3(y)


def gram_matrix(y: torch.Tensor) -> torch.Tensor:
    b, ch, h, w = y.size()
    f = y.view(b, ch, w * h)
    return f.bmm(f.transpose(1, 2)) / (ch * h * w)


def normalize_batch(batch: torch.Tensor) -> torch.Tensor:
    mean = batch.new_tensor([0.485, 0.456, 0.406]).view(-1, 1, 1)
    std = batch.new_tensor([0.229, 0.224, 0.225]).view(-1, 1, 1)
    return (batch / 255.0 - mean) / std


def train_steps(batches: list[torch.Tensor], style: torch.Tensor, content_weight: float = 1e5,
                style_weight: float = 1e10, lr: float = 1e-3, seed: int = 0) -> float:  # fmt: skip
    """The example's training loop over ``batches`` ((B, 3, S, S) in 0..255); returns seconds per step.

    Timed from before the style Grams are computed (as the example does once per run) to the last step.
    """
    torch.manual_seed(seed)
    transformer, vgg = TransformerNet(), Vgg16()
    optimizer = torch.optim.Adam(transformer.parameters(), lr)
    mse_loss = nn.MSELoss()
    t0 = time.perf_counter()
    features_style = vgg(normalize_batch(style.repeat(len(batches[0]), 1, 1, 1)))
    gram_style = [gram_matrix(y) for y in features_style]
    for x in batches:
        n_batch = len(x)
        optimizer.zero_grad()
        y = transformer(x)
        y, xn = normalize_batch(y), normalize_batch(x)
        features_y, features_x = vgg(y), vgg(xn)
        content_loss = content_weight * mse_loss(features_y.relu2_2, features_x.relu2_2)
        style_loss = 0.0
        for ft_y, gm_s in zip(features_y, gram_style, strict=True):
            style_loss += mse_loss(gram_matrix(ft_y), gm_s[:n_batch, :, :])
        total_loss = content_loss + style_weight * style_loss
        total_loss.backward()
        optimizer.step()
    return (time.perf_counter() - t0) / len(batches)
