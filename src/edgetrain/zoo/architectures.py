"""The built-in networks, written for small inputs (CIFAR-style stems).

Every image network takes ``num_classes``, ``in_channels`` and ``input_size`` (H, W)
and works for any input of at least 8x8: a downsampling step is skipped once the
feature map is down to 1 pixel, and the head uses adaptive pooling. ReLUs (GELUs in
``GPT``) are separate, non-in-place modules so that forward hooks and saved-tensor
hooks see every activation. ``MLP`` also takes flat feature vectors [N, F]
(``in_channels=F``, ``input_size=(1, 1)``); ``GPT`` takes token ids [N, T].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgetrain.errors import EdgeTrainError

__all__ = ["GPT", "MLP", "VGG11", "MobileNetV2", "ResNet18", "SmallCNN"]

Size = tuple[int, int]


def _can_downsample(size: Size) -> bool:
    return min(size) >= 2


def _after_stride2(size: Size) -> Size:
    """Size after a 3x3 (or 1x1) conv with stride 2 and 'same' padding."""
    return (math.ceil(size[0] / 2), math.ceil(size[1] / 2))


def _scaled(channels: int, width_mult: float, divisor: int = 1) -> int:
    """Scale a channel count, round to a multiple of ``divisor``, never below it."""
    value = channels * width_mult
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:  # do not round down by more than 10%
        rounded += divisor
    return rounded


def _head(in_features: int, num_classes: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)


def _init_weights(module: nn.Module, *, linear_std: float | None = 0.01) -> None:
    """He init for convolutions, identity for norms, N(0, linear_std) for linear layers.

    ``linear_std=None`` keeps PyTorch's default init for linear layers.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)


class MLP(nn.Module):
    """Flatten, then fully connected hidden layers with ReLU.

    Takes [N, C, H, W] images or [N, F] features (``in_channels=F``, ``input_size=(1, 1)``):
    whatever flattens to ``in_channels * H * W`` values.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        input_size: Size,
        hidden: Sequence[int] = (256, 128),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_channels * input_size[0] * input_size[1]
        for units in hidden:
            layers += [nn.Linear(width, units), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = units
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Conv-BN-ReLU-maxpool blocks (16, 32 channels by default) and a linear head.

    The feature map is average-pooled to at most 4x4 before the head, so the head
    stays small for large inputs.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        input_size: Size,
        channels: Sequence[int] = (16, 32),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        size, width = input_size, in_channels
        for out in channels:
            layers += [
                nn.Conv2d(width, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(),
            ]
            if _can_downsample(size):
                layers.append(nn.MaxPool2d(2))
                size = (size[0] // 2, size[1] // 2)
            width = out
        pooled = (min(size[0], 4), min(size[1], 4))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(pooled)
        self.head = _head(width * pooled[0] * pooled[1], num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))


class VGG11(nn.Module):
    """VGG-11 for CIFAR: 8 3x3 convs, 5 max-pools, one linear classifier.

    Batch norm after each conv only with ``batch_norm=True``.
    """

    CONFIG: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        input_size: Size,
        batch_norm: bool = False,
        width_mult: float = 1.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        size, width = input_size, in_channels
        for item in self.CONFIG:
            if item == "M":
                if _can_downsample(size):
                    layers.append(nn.MaxPool2d(2))
                    size = (size[0] // 2, size[1] // 2)
                continue
            out = _scaled(int(item), width_mult)
            # On a 1x1 map a padded 3x3 conv only uses its centre tap: a 1x1 conv is the same
            # function, and its He init then matches the real fan (with 3x3 the signal of a
            # deep plain VGG on 8x8 digits shrank ~9x per layer and training never started).
            kernel = 1 if size == (1, 1) else 3
            layers.append(nn.Conv2d(width, out, kernel, padding=kernel // 2, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU())
            width = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = _head(width, num_classes, dropout)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (1x1 projection when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 (BasicBlock, [2, 2, 2, 2]).

    ``stem="cifar"`` (default): 3x3 stride-1 conv, no max-pool, for 32x32 inputs.
    ``stem="imagenet"``: 7x7 stride-2 conv and a 3x3 stride-2 max-pool, for 224x224.
    """

    STEMS = ("cifar", "imagenet")

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        input_size: Size,
        width_mult: float = 1.0,
        stem: str = "cifar",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        widths = [_scaled(c, width_mult) for c in (64, 128, 256, 512)]
        size = input_size
        if stem == "imagenet" and _can_downsample(size):
            stem_layers: list[nn.Module] = [
                nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False),
                nn.BatchNorm2d(widths[0]),
                nn.ReLU(),
            ]
            size = _after_stride2(size)
            if _can_downsample(size):
                stem_layers.append(nn.MaxPool2d(3, 2, 1))
                size = _after_stride2(size)
        else:
            stem_layers = [
                nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                nn.BatchNorm2d(widths[0]),
                nn.ReLU(),
            ]
        self.stem = nn.Sequential(*stem_layers)
        stages: list[nn.Module] = []
        width = widths[0]
        for index, out in enumerate(widths):
            stride = 2 if index > 0 and _can_downsample(size) else 1
            if stride == 2:
                size = _after_stride2(size)
            stages.append(nn.Sequential(BasicBlock(width, out, stride), BasicBlock(out, out, 1)))
            width = out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = _head(width, num_classes, dropout)
        _init_weights(self, linear_std=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.pool(x))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_channels * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [
                nn.Conv2d(in_channels, hidden, 1, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU6(),
            ]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 with CIFAR strides: stride-1 stem and stride-1 second stage (8x downsampling)."""

    # expansion t, channels c, repeats n, stride s
    CONFIG: tuple[tuple[int, int, int, int], ...] = (
        (1, 16, 1, 1),
        (6, 24, 2, 1),  # stride 2 on ImageNet
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        input_size: Size,
        width_mult: float = 1.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        width = _scaled(32, width_mult, 8)
        last_width = _scaled(1280, max(1.0, width_mult), 8)
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU6(),
        ]
        size = input_size
        for expand, channels, repeats, first_stride in self.CONFIG:
            out = _scaled(channels, width_mult, 8)
            for index in range(repeats):
                stride = first_stride if index == 0 and _can_downsample(size) else 1
                if stride == 2:
                    size = _after_stride2(size)
                layers.append(InvertedResidual(width, out, stride, expand))
                width = out
        layers += [
            nn.Conv2d(width, last_width, 1, bias=False),
            nn.BatchNorm2d(last_width),
            nn.ReLU6(),
        ]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = _head(last_width, num_classes, dropout)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position t sees positions <= t only."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).unbind(dim=2)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=True,
        )
        return self.resid_dropout(self.proj(out.transpose(1, 2).reshape(b, t, d)))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: x + attention(LN(x)), then x + MLP(LN(x)) with a 4x GELU MLP."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model),
            nn.GELU(),
            nn.Linear(4 * d_model, d_model),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """A small decoder-only transformer: token ids [N, T] -> next-token logits [N, T, V].

    Token and learned position embeddings, ``n_layers`` pre-LayerNorm blocks of causal
    self-attention and a GELU MLP, a final LayerNorm and a linear head to the
    vocabulary. GPT-2 initialisation: N(0, 0.02), residual projections scaled by
    1 / sqrt(2 * n_layers). Sequences may be shorter than ``seq_len``, not longer.
    """

    def __init__(
        self,
        vocab_size: int,
        seq_len: int,
        d_model: int = 128,
        n_layers: int = 2,
        n_heads: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be a multiple of n_heads ({n_heads})")
        self.seq_len = seq_len
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(seq_len, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(
            *(TransformerBlock(d_model, n_heads, dropout) for _ in range(n_layers))
        )
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.normal_(m.weight, 0.0, 0.02)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp[2]):
                nn.init.normal_(proj.weight, 0.0, 0.02 / math.sqrt(2 * n_layers))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dim() != 2 or ids.is_floating_point() or ids.is_complex():
            raise EdgeTrainError(
                f"gpt takes integer token ids [N, T], got {ids.dtype} {tuple(ids.shape)}"
            )
        t = ids.shape[1]
        if t > self.seq_len:
            raise EdgeTrainError(
                f"gpt takes sequences of at most seq_len={self.seq_len} tokens, got {t}"
            )
        pos = torch.arange(t, device=ids.device)
        x = self.drop(self.tok_emb(ids) + self.pos_emb(pos))
        return self.head(self.ln_f(self.blocks(x)))
