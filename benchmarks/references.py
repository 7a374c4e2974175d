"""Plain-PyTorch reference implementations the benchmarks measure robustlab against.

Each is written after the peer codebase's algorithm, as a researcher would write it:
robust_overfitting's PGD-AT step (Rice et al. 2020), TRADES' ``trades_loss`` (Zhang et al.
2019), and a ``DataLoader`` with per-sample crop and flip transforms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset


def pgd_at_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
) -> torch.Tensor:
    """robust_overfitting's ``attack_pgd`` + update: a uniform start, sign steps with
    ``loss.backward()`` (which also fills the weights' gradients), clamping, the attack in eval
    mode and the update in train mode."""
    model.eval()
    delta = torch.zeros_like(x).uniform_(-eps, eps)
    delta = torch.max(torch.min(delta, 1 - x), -x)
    delta.requires_grad_(True)
    for _ in range(steps):
        loss = F.cross_entropy(model(x + delta), y)
        loss.backward()
        grad = delta.grad.detach()
        d = torch.clamp(delta + alpha * torch.sign(grad), -eps, eps)
        d = torch.max(torch.min(d, 1 - x), -x)
        delta.data = d
        delta.grad.zero_()
    model.train()
    loss = F.cross_entropy(model(x + delta.detach()), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach()


def trades_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    step_size: float,
    epsilon: float,
    perturb_steps: int,
    beta: float,
) -> torch.Tensor:
    """TRADES' reference loss (L-inf): the clean distribution is recomputed at every attack step,
    and the clean batch runs twice in train mode (for the CE and for the KL target)."""
    criterion_kl = nn.KLDivLoss(reduction="sum")
    model.eval()
    x_adv = x.detach() + 0.001 * torch.randn_like(x)
    for _ in range(perturb_steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss_kl = criterion_kl(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x), dim=1))
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        x_adv = x_adv.detach() + step_size * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - epsilon), x + epsilon)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    model.train()
    x_adv = torch.clamp(x_adv, 0.0, 1.0).detach()
    logits = model(x)
    loss_natural = F.cross_entropy(logits, y)
    loss_robust = (1.0 / len(x)) * criterion_kl(
        F.log_softmax(model(x_adv), dim=1), F.softmax(model(x), dim=1)
    )
    return loss_natural + beta * loss_robust


class TransformedImages(Dataset):
    """uint8 CHW images with torchvision-style per-sample RandomCrop(padding=4) and
    RandomHorizontalFlip, in plain torch."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, padding: int = 4) -> None:
        self.images, self.labels, self.padding = images, labels, padding

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        _, height, width = image.shape
        padded = F.pad(image, (self.padding,) * 4)
        top, left = torch.randint(0, 2 * self.padding + 1, (2,)).tolist()
        image = padded[:, top : top + height, left : left + width]
        if torch.rand(()) < 0.5:
            image = image.flip(2)
        return image.float().div(255), self.labels[index]
