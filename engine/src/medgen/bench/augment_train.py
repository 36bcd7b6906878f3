"""The downstream models of `medgen bench augment`: small MONAI networks trained on 2D lesion crops.

Segmentation: MONAI's UNet, Dice + cross-entropy loss, scored by Dice per held-out crop. Classification
(lesion type): MONAI's Classifier, cross-entropy, scored by the one-vs-rest AUC averaged over the
classes the held-out set holds. Every arm trains for the same number of steps at the same batch size,
so arms differ only in the data they draw from; random flips and quarter turns augment every batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import rankdata

from medgen.bench.augment_data import Sample


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 300
    batch_size: int = 16
    learning_rate: float = 3e-3
    channels: tuple[int, ...] = (8, 16, 32)


def _stack(samples: list[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.from_numpy(np.stack([s.image for s in samples])[:, None])
    masks = torch.from_numpy(np.stack([s.mask for s in samples])[:, None].astype(np.float32))
    return images, masks


def _augment(images: torch.Tensor, targets: torch.Tensor | None, generator: torch.Generator):
    """The same random flip and quarter turn for a batch's images and (when given) masks."""
    turns = int(torch.randint(4, (1,), generator=generator))
    flip = bool(torch.randint(2, (1,), generator=generator))
    images = torch.rot90(images, turns, dims=(2, 3))
    images = torch.flip(images, dims=(3,)) if flip else images
    if targets is not None:
        targets = torch.rot90(targets, turns, dims=(2, 3))
        targets = torch.flip(targets, dims=(3,)) if flip else targets
    return images, targets


def _batches(count: int, settings: TrainSettings, generator: torch.Generator):
    for _ in range(settings.steps):
        yield torch.randint(count, (min(settings.batch_size, count),), generator=generator)


def segmentation_dice(train: list[Sample], test: list[Sample], *, seed: int, settings: TrainSettings) -> np.ndarray:
    """Train a UNet on ``train`` from ``seed`` and return the Dice of each ``test`` crop (threshold 0.5)."""
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    # Batch norm: with MONAI's default instance norm some seeds died (no voxel predicted, Dice 0)
    net = UNet(spatial_dims=2, in_channels=1, out_channels=1, channels=settings.channels,
               strides=(2,) * (len(settings.channels) - 1), num_res_units=1, norm="batch")
    loss_function = DiceCELoss(sigmoid=True)
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.learning_rate)
    images, masks = _stack(train)
    net.train()
    for batch in _batches(len(train), settings, generator):
        x, y = _augment(images[batch], masks[batch], generator)
        optimizer.zero_grad()
        loss = loss_function(net(x), y)
        loss.backward()
        optimizer.step()
    net.eval()
    test_images, test_masks = _stack(test)
    with torch.no_grad():
        predicted = net(test_images) > 0.0  # sigmoid > 0.5
    truth = test_masks > 0.5
    overlap = (predicted & truth).sum(dim=(1, 2, 3)).double()
    total = predicted.sum(dim=(1, 2, 3)).double() + truth.sum(dim=(1, 2, 3)).double()
    return (2.0 * overlap / total.clamp(min=1.0)).numpy()


def classification_scores(
    train: list[Sample], test: list[Sample], classes: list[str], *, seed: int, settings: TrainSettings
) -> np.ndarray:
    """Train a Classifier on ``train`` from ``seed``; the class probabilities of each ``test`` crop."""
    from monai.networks.nets import Classifier

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    size = train[0].image.shape
    net = Classifier(in_shape=(1, *size), classes=len(classes), channels=settings.channels,
                     strides=(2,) * len(settings.channels), num_res_units=1)
    index = {name: i for i, name in enumerate(classes)}
    images, _ = _stack(train)
    labels = torch.tensor([index[s.label] for s in train])
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.learning_rate)
    net.train()
    for batch in _batches(len(train), settings, generator):
        x, _ = _augment(images[batch], None, generator)
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), labels[batch])
        loss.backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        return torch.softmax(net(_stack(test)[0]), dim=1).numpy()


def one_vs_rest_auc(scores: np.ndarray, labels: list[str], classes: list[str]) -> dict[str, float]:
    """AUC of each class present in ``labels`` (with at least one other class present): the chance a
    crop of the class scores higher for it than a crop of another class, ties counting half."""
    labels_array = np.array(labels)
    aucs = {}
    for i, name in enumerate(classes):
        positive = labels_array == name
        n_pos, n_neg = int(positive.sum()), int((~positive).sum())
        if n_pos == 0 or n_neg == 0:
            continue
        ranks = rankdata(scores[:, i])
        aucs[name] = float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
    return aucs
