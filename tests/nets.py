"""Small networks defined by the tests themselves (not from the package)."""

import torch
from torch import nn


class SmallResidualCNN(nn.Module):
    """conv-BN stem, a residual block, a depthwise conv, a concat, and a flatten -> linear head."""

    def __init__(self, in_channels=3, num_classes=5):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.conv_a = nn.Conv2d(8, 12, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(12)
        self.conv_b = nn.Conv2d(12, 8, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.mix = nn.Conv2d(16, 6, 1)
        self.fc1 = nn.Linear(6 * 4 * 4, 16)
        self.fc2 = nn.Linear(16, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        y = torch.relu(self.bn_a(self.conv_a(x)))
        x = torch.relu(x + self.bn_b(self.conv_b(y)))
        x = torch.cat([x, torch.relu(self.dw(x))], dim=1)
        x = nn.functional.adaptive_avg_pool2d(torch.relu(self.mix(x)), 4)
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


class AuxHeadCNN(SmallResidualCNN):
    """An auxiliary head (deep supervision) on ``conv_a``'s 12 channels that ``forward()`` never
    calls: only a training step does, through :meth:`aux_logits`."""

    def __init__(self, in_channels=3, num_classes=5):
        super().__init__(in_channels, num_classes)
        self.aux = nn.Conv2d(12, num_classes, 1)

    def aux_logits(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        return self.aux(torch.relu(self.bn_a(self.conv_a(x)))).mean((2, 3))


def randomize_bn(model: nn.Module, seed: int = 0) -> None:
    """Give every BN non-trivial statistics and affine parameters."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


def random_keep_masks(groups, seed: int) -> dict:
    """Per group, a random bool mask keeping about half the channels (at least one)."""
    gen = torch.Generator().manual_seed(seed)
    masks = {}
    for g in groups:
        keep = torch.rand(g.size, generator=gen) < 0.5
        keep[int(torch.randint(0, g.size, (1,), generator=gen))] = True
        masks[g.name] = keep
    return masks


class SmallDenseNet(nn.Module):
    """DenseNet-style: each layer (BN-ReLU-conv) reads the concat of everything before it; a
    transition (BN-ReLU-1x1 conv) reads the whole stream."""

    def __init__(self, in_channels=3, num_classes=5, growth=4):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 8, 3, padding=1, bias=False)
        self.layer1 = nn.Sequential(nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, growth, 3, padding=1, bias=False))
        self.layer2 = nn.Sequential(nn.BatchNorm2d(8 + growth), nn.ReLU(),
                                    nn.Conv2d(8 + growth, growth, 3, padding=1, bias=False))
        self.transition = nn.Sequential(nn.BatchNorm2d(8 + 2 * growth), nn.ReLU(), nn.Conv2d(8 + 2 * growth, 8, 1))
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([x, self.layer1(x)], 1)
        x = torch.cat([x, self.layer2(x)], 1)
        return self.fc(nn.functional.adaptive_avg_pool2d(self.transition(x), 1).flatten(1))


class SmallUNet(nn.Module):
    """Encoder, a transposed-conv decoder and a skip concat; per-pixel outputs."""

    def __init__(self, in_channels=3, num_classes=2):
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.enc2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.dec = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Conv2d(8, num_classes, 1)

    def forward(self, x):
        skip = self.enc1(x)
        x = torch.relu(self.up(self.enc2(skip)))
        return self.head(self.dec(torch.cat([x, skip], 1)))


class SmallResNeXt(nn.Module):
    """A ResNeXt bottleneck: 1x1 conv, a grouped 3x3 conv (groups=4), 1x1 conv, residual add."""

    def __init__(self, in_channels=3, num_classes=5, width=16, groups=4):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(16)
        self.reduce = nn.Conv2d(16, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.grouped = nn.Conv2d(width, width, 3, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.expand = nn.Conv2d(width, 16, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        y = torch.relu(self.bn1(self.reduce(x)))
        y = torch.relu(self.bn2(self.grouped(y)))
        x = torch.relu(x + self.bn3(self.expand(y)))
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


class SmallSEConcat(nn.Module):
    """Two branches concatenated, then a squeeze-and-excitation gate over the concat: the gate's
    output channels are cut with both branches, each branch's at its offset in the concat."""

    def __init__(self, in_channels=3, num_classes=5):
        super().__init__()
        self.se_reduce, self.se_expand = nn.Linear(12, 4), nn.Linear(4, 12)  # (defined first: not the roots)
        self.b1 = nn.Sequential(nn.Conv2d(in_channels, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.b2 = nn.Sequential(nn.Conv2d(in_channels, 6, 1), nn.BatchNorm2d(6), nn.ReLU())
        self.conv = nn.Conv2d(12, 8, 3, padding=1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = torch.cat([self.b1(x), self.b2(x)], 1)
        gate = torch.sigmoid(self.se_expand(torch.relu(self.se_reduce(x.mean((2, 3))))))
        return self.fc(torch.relu(self.conv(x * gate[:, :, None, None])).mean((2, 3)))


class PairSum(nn.Module):
    """conv1's channels summed in pairs (a reshape that mixes channels) before conv2 reads them:
    the tracer loses them there, and conv1's group had no consumer, like the classifier's."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 3), nn.Linear(6, 5)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        b, c, h, w = x.shape
        x = x.reshape(b, c // 2, 2, h, w).sum(2).repeat_interleave(2, 1)
        return self.fc(torch.relu(self.conv2(x)).mean((2, 3)))


class GroupedTransposed(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.up = nn.Conv2d(3, 8, 3, padding=1), nn.ConvTranspose2d(8, 8, 2, stride=2, groups=2)
        self.c2, self.fc = nn.Conv2d(8, 4, 3, padding=1), nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.c2(torch.relu(self.up(torch.relu(self.c1(x)))))).mean((2, 3)))


class TiedBranches(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)
        self.b.weight = self.a.weight  # one parameter under two names
        self.c, self.fc = nn.Conv2d(8, 4, 3, padding=1), nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.c(torch.relu(self.a(x)) + torch.relu(self.b(x.flip(3))))).mean((2, 3)))
