"""A plain PyTorch (CPU) implementation of the work that benchmarks/bench_vs_torch.py times on the JAX side.

For comparison only: the package never imports it, and torch is an optional extra (`pip install .[bench]`).
torchvision is not used (it does not install here): the ResNet is written by hand in torchvision's layout.

What is here, NCHW as torch code usually is:
  ResNet v1.5 cut after a layer (18/34 basic blocks, 50/101/152 bottlenecks; any stem width),
  FeatureRegression (k x k VALID conv -> BN -> ReLU, twice -> flatten -> Linear),
  the weakalign correlation (L2-normalised features, one bmm, A positions column-major), its swap C_AB -> C_BA,
  the two-stage affine -> TPS cascade (A warped at image size by F.grid_sample, a second encoder pass),
  the weak inlier score on the affine and on the composed Aff(TPS) grid (bilinear correspondence mask, the composed
  grid's validity mask), the affine cycle loss, CNNGeo's grid loss, and training steps with torch.optim.Adam that
  skip the update when the loss or a gradient is not finite (the JAX step's guard).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

OFFSET_FACTOR = 227.0 / 210.0
GRID_TOLERANCE = 2e-6
INVALID_COORDINATE = -1e10
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESNET_BLOCKS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3)),
                 101: ("bottleneck", (3, 4, 23, 3)), 152: ("bottleneck", (3, 8, 36, 3))}
LAYERS = ("stem", "layer1", "layer2", "layer3", "layer4")


# ------------------------------------------------------------------------------------------------------------
# Encoder.


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, width, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = None
        if stride != 1 or cin != width:
            self.downsample = nn.Sequential(nn.Conv2d(cin, width, 1, stride, bias=False), nn.BatchNorm2d(width))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu((x if self.downsample is None else self.downsample(x)) + y)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, width, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.downsample = None
        if stride != 1 or cin != width * 4:
            self.downsample = nn.Sequential(nn.Conv2d(cin, width * 4, 1, stride, bias=False),
                                            nn.BatchNorm2d(width * 4))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu((x if self.downsample is None else self.downsample(x)) + y)


class ResNet(nn.Module):
    """torchvision's ResNet v1.5 truncated after `last_layer`; forward returns the last layer's features."""

    def __init__(self, depth=101, last_layer="layer3", width=64):
        super().__init__()
        kind, blocks = RESNET_BLOCKS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.levels = LAYERS.index(last_layer)
        cin, stages = width, []
        for level in range(1, self.levels + 1):
            layer_width = width * 2 ** (level - 1)
            layer = []
            for i in range(blocks[level - 1]):
                layer.append(block(cin, layer_width, 2 if (i == 0 and level > 1) else 1))
                cin = layer_width * block.expansion
            stages.append(nn.Sequential(*layer))
        self.layers = nn.ModuleList(stages)
        self.out_channels = cin

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        if self.levels > 0:
            x = F.max_pool2d(x, 3, 2, 1)
        for layer in self.layers:
            x = layer(x)
        return x


# ------------------------------------------------------------------------------------------------------------
# Correlation and heads.


def l2_normalize(x, eps=1e-6):
    """Over the channel axis (dim 1) of (B, C, h, w), epsilon inside the root."""
    return x / torch.sqrt(torch.sum(x * x, dim=1, keepdim=True) + eps)


def raw_correlation(f_a, f_b):
    """Features (B, c, h, w) x2 -> C_AB (B, h·w, h, w) on B's grid, channel k = x_A·h + y_A (weakalign's order)."""
    b, c, h, w = f_a.shape
    f_a = l2_normalize(f_a).transpose(2, 3).reshape(b, c, h * w)
    f_b = l2_normalize(f_b).reshape(b, c, h * w).transpose(1, 2)
    corr = torch.bmm(f_b, f_a)  # (b, hw_B, hw_A)
    return corr.view(b, h, w, h * w).permute(0, 3, 1, 2)


def swap_correlation(corr_ab):
    """Un-normalised C_AB (B, h·w, h, w) -> C_BA (B, h·w, h, w) on A's grid (a permutation)."""
    b, k, h, w = corr_ab.shape
    by_position = corr_ab.reshape(b, w, h, h, w)  # [b, x_A, y_A, y_B, x_B]
    return by_position.permute(0, 4, 3, 2, 1).reshape(b, k, h, w)


def normalize_correlation(corr):
    return l2_normalize(F.relu(corr))


class FeatureRegression(nn.Module):
    """Correlation (B, h·w, h, w) -> θ (B, output_dim): VALID conv k0 -> BN -> ReLU -> VALID conv k1 -> BN -> ReLU
    -> Linear."""

    def __init__(self, grid, output_dim, channels=(128, 64), kernels=(7, 5)):
        super().__init__()
        layers, cin, size = [], grid * grid, grid
        for cout, k in zip(channels, kernels):
            layers += [nn.Conv2d(cin, cout, k), nn.BatchNorm2d(cout), nn.ReLU()]
            cin, size = cout, size - k + 1
        self.conv = nn.Sequential(*layers)
        self.linear = nn.Linear(cin * size * size, output_dim)

    def forward(self, corr):
        return self.linear(self.conv(corr).flatten(1))


# ------------------------------------------------------------------------------------------------------------
# Geometry: points, grids, TPS, composed grid.


def base_points(h, w):
    """(h·w, 2) xy points of the corner-aligned (h, w) grid, row-major (y slow)."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    return torch.stack([x.reshape(-1), y.reshape(-1)], dim=-1)


def affine_points(theta, points, offset=1.0):
    """theta (B, 6), points (P, 2) -> (B, P, 2): A p + o t."""
    m = theta.view(-1, 2, 3)
    return points @ m[:, :, :2].transpose(1, 2) + offset * m[:, None, :, 2]


def _tps_inverse(reg):
    cx = np.repeat(np.linspace(-1.0, 1.0, 3), 3)
    cy = np.tile(np.linspace(-1.0, 1.0, 3), 3)
    d = (cx[:, None] - cx[None]) ** 2 + (cy[:, None] - cy[None]) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0) + reg * np.eye(9)
    p = np.stack([np.ones(9), cx, cy], axis=1)
    full = np.block([[k, p], [p.T, np.zeros((3, 3))]])
    control = torch.tensor(np.stack([cx, cy], axis=1), dtype=torch.float32)
    return torch.tensor(np.linalg.inv(full), dtype=torch.float32), control


def tps_points(theta, points, reg=0.0, offset=1.0):
    """theta (B, 18) = [Q_X(9), Q_Y(9)], points (P, 2) -> (B, P, 2): o·T(p / o)."""
    inverse, control = _tps_inverse(reg)
    points = points / offset
    targets = theta.view(-1, 2, 9).transpose(1, 2)  # (B, 9, 2)
    weights = inverse[:9, :9] @ targets
    affine = inverse[9:, :9] @ targets  # (B, 3, 2)
    d = ((points[:, None, :] - control[None]) ** 2).sum(-1)  # (P, 9)
    u = torch.where(d > 0, d * torch.log(torch.where(d > 0, d, torch.ones_like(d))), torch.zeros_like(d))
    return offset * (affine[:, :1] + points @ affine[:, 1:] + u @ weights)


def _inside(grid):
    return (grid.abs() < 1.0 - GRID_TOLERANCE).all(dim=-1)


def composed_grid(theta_aff, theta_tps, h, w, reg, offset):
    """The composed loss-time grid (B, h, w, 2): the valid-masked affine grid sampled at the TPS grid."""
    points = base_points(h, w)
    grid_aff = affine_points(theta_aff, points, offset).view(-1, h, w, 2)
    grid_tps = tps_points(theta_tps, points, reg, offset).view(-1, h, w, 2)
    sampled = F.grid_sample(grid_aff.permute(0, 3, 1, 2), grid_tps, align_corners=True).permute(0, 2, 3, 1)
    node_valid = _inside(grid_aff).reshape(-1, h * w)
    ix = (grid_tps[..., 0] + 1) / 2 * (w - 1)
    iy = (grid_tps[..., 1] + 1) / 2 * (h - 1)
    tx, ty = GRID_TOLERANCE * (w - 1) / 2, GRID_TOLERANCE * (h - 1) / 2
    ok = _inside(grid_tps)
    for xs in (torch.floor(ix + tx), torch.ceil(ix - tx)):
        for ys in (torch.floor(iy + ty), torch.ceil(iy - ty)):
            index = (ys.clamp(0, h - 1) * w + xs.clamp(0, w - 1)).long().reshape(-1, h * w)
            ok = ok & torch.gather(node_valid, 1, index).view(-1, h, w)
    return torch.where(ok[..., None], sampled, torch.full_like(sampled, INVALID_COORDINATE))


def inlier_score(corr, grid):
    """Normalised C_AB (B, h·w, h, w) and a sampling grid (B, h, w, 2) -> the weak inlier score (B,)."""
    b, k, h, w = corr.shape
    ux = (grid[..., 0] + 1) / 2 * (w - 1)
    uy = (grid[..., 1] + 1) / 2 * (h - 1)
    mx = F.relu(1 - (ux[..., None] - torch.arange(w, dtype=torch.float32)).abs())  # (B, h, w, w_A)
    my = F.relu(1 - (uy[..., None] - torch.arange(h, dtype=torch.float32)).abs())  # (B, h, w, h_A)
    m = (mx[..., :, None] * my[..., None, :]).reshape(b, h, w, k)  # k = x_A·h + y_A
    m = m / (m.sum(dim=(1, 2, 3), keepdim=True) + 1e-5 * h * w * k)
    return (m * corr.permute(0, 2, 3, 1)).sum(dim=(1, 2, 3))


def matching_scores(corr, theta_aff, theta_tps, reg=0.2, offset=OFFSET_FACTOR):
    """(affine score (B,), composed score (B,)) of one direction."""
    b, k, h, w = corr.shape
    grid_aff = affine_points(theta_aff, base_points(h, w), offset).view(b, h, w, 2)
    return inlier_score(corr, grid_aff), inlier_score(corr, composed_grid(theta_aff, theta_tps, h, w, reg, offset))


def _safe_norm(v):
    squared = (v * v).sum(-1)
    positive = squared > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, squared, torch.ones_like(squared))),
                       torch.zeros_like(squared))


def affine_cycle_loss(aff_ab, aff_ba, grid_size=10):
    """½(mean ‖T_AB(T_BA(p)) − p‖ + mean ‖T_BA(T_AB(q)) − q‖) on a K×K grid, affine maps, mean over the batch."""
    p = base_points(grid_size, grid_size)

    def through(first, second):
        mid = affine_points(first, p)  # (B, P, 2)
        m = second.view(-1, 2, 3)
        return mid @ m[:, :, :2].transpose(1, 2) + m[:, None, :, 2]
    back_a, back_b = through(aff_ba, aff_ab), through(aff_ab, aff_ba)
    return 0.5 * (_safe_norm(back_a - p).mean() + _safe_norm(back_b - p).mean())


def grid_loss(theta_pred, theta_true, kind, grid_size=20):
    p = base_points(grid_size, grid_size)
    apply = affine_points if kind == "affine" else tps_points
    return ((apply(theta_pred, p) - apply(theta_true, p)) ** 2).sum(-1).mean()


def normalize_images(images_uint8):
    """(B, H, W, 3) uint8 numpy -> (B, 3, H, W) ImageNet-normalised float32."""
    x = torch.from_numpy(np.ascontiguousarray(images_uint8)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


# ------------------------------------------------------------------------------------------------------------
# The matcher and its steps.


class Matcher(nn.Module):
    """Encoder + affine and TPS heads (the JAX MatchingModel's layers)."""

    def __init__(self, depth=101, last_layer="layer3", width=64, image_size=240, channels=(128, 64),
                 kernels=(7, 5), encoder_bn_train=False):
        super().__init__()
        self.encoder = ResNet(depth, last_layer, width)
        grid = image_size // 2 ** (1 + LAYERS.index(last_layer)) if last_layer != "stem" else image_size // 2
        self.grid = grid
        self.image_size = image_size
        self.affine_regression = FeatureRegression(grid, 6, channels, kernels)
        self.tps_regression = FeatureRegression(grid, 18, channels, kernels)
        self.encoder_bn_train = encoder_bn_train

    def train(self, mode=True):
        """Training mode for the heads; the encoder's BatchNorm stays in eval mode unless encoder_bn_train."""
        super().train(mode)
        self.encoder.train(mode and self.encoder_bn_train)
        return self

    def warp(self, images, theta_aff):
        n = images.shape[0]
        grid = F.affine_grid(theta_aff.view(-1, 2, 3), (n, 3, self.image_size, self.image_size), align_corners=True)
        return F.grid_sample(images, grid, align_corners=True)

    def cascade(self, image_a, image_b):
        """The eval cascade, 3 encoder passes (A, B, A warped): (θ_aff (B, 6), θ_tps (B, 18))."""
        f_a, f_b = self.encoder(image_a), self.encoder(image_b)
        theta_aff = self.affine_regression(normalize_correlation(raw_correlation(f_a, f_b)))
        f_aw = self.encoder(self.warp(image_a, theta_aff))
        theta_tps = self.tps_regression(normalize_correlation(raw_correlation(f_aw, f_b)))
        return theta_aff, theta_tps

    def pair(self, image_a, image_b):
        """Both directions AB and BA, 4 encoder passes (A and B in one call, A' and B' in one call).

        Returns (corr_ab, corr_ba) normalised, and θ_aff, θ_tps of each direction (dicts 'ab', 'ba')."""
        n = image_a.shape[0]
        f_a, f_b = self.encoder(torch.cat([image_a, image_b])).split(n)
        raw_ab = raw_correlation(f_a, f_b)
        corr_ab, corr_ba = normalize_correlation(raw_ab), normalize_correlation(swap_correlation(raw_ab))
        aff_ab, aff_ba = self.affine_regression(torch.cat([corr_ab, corr_ba])).split(n)
        warped = self.warp(torch.cat([image_a, image_b]), torch.cat([aff_ab, aff_ba]))
        f_w = self.encoder(warped)
        corr_2 = normalize_correlation(raw_correlation(f_w, torch.cat([f_b, f_a])))
        tps_ab, tps_ba = self.tps_regression(corr_2).split(n)
        return corr_ab, corr_ba, {"ab": aff_ab, "ba": aff_ba}, {"ab": tps_ab, "ba": tps_ba}


def weak_pair_loss(model, image_a, image_b):
    """−(mean_dir affine score + mean_dir composed score) + affine cycle loss, mean over the batch."""
    corr_ab, corr_ba, aff, tps = model.pair(image_a, image_b)
    aff_ab, comp_ab = matching_scores(corr_ab, aff["ab"], tps["ab"])
    aff_ba, comp_ba = matching_scores(corr_ba, aff["ba"], tps["ba"])
    matching = -((aff_ab + aff_ba) / 2 + (comp_ab + comp_ba) / 2).mean()
    return matching + affine_cycle_loss(aff["ab"], aff["ba"])


def strong_loss(model, batch):
    """CNNGeo's strong loss: one encoder call on the four image sets, grid loss of each head."""
    names = ("affine_image_a", "affine_image_b", "tps_image_a", "tps_image_b")
    f = model.encoder(torch.cat([batch[k] for k in names])).chunk(4)
    theta_aff = model.affine_regression(normalize_correlation(raw_correlation(f[0], f[1])))
    theta_tps = model.tps_regression(normalize_correlation(raw_correlation(f[2], f[3])))
    return grid_loss(theta_aff, batch["affine_theta"], "affine") + grid_loss(theta_tps, batch["tps_theta"], "tps")


def train_step(model, optimizer, loss_fn, *args):
    """One Adam step; skipped (state kept) when the loss or any gradient is not finite. Returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model, *args)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    finite = bool(torch.isfinite(loss)) and all(bool(torch.isfinite(g).all()) for g in grads)
    if finite:
        optimizer.step()
    return float(loss.detach())
