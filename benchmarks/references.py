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


def conv_singular_values_loop(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """Every singular value of a stride-1 circular convolution on a size x size input, the
    plain way: the 2-D FFT of the kernel padded to size x size (Sedghi, Gupta & Long 2019,
    Theorem 6), then one ``svdvals`` per frequency in a Python loop, all size² of them."""
    transforms = torch.fft.fft2(kernel, s=(size, size))  # (c_out, c_in, size, size)
    values = [
        torch.linalg.svdvals(transforms[:, :, u, v]) for u in range(size) for v in range(size)
    ]
    return torch.cat(values).sort(descending=True).values


def pyhessian_top_eigenvalues(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    top_n: int,
    max_iter: int,
    tol: float,
) -> tuple[list[float], list[list[torch.Tensor]]]:
    """PyHessian's ``hessian(model, criterion, data=(x, y)).eigenvalues(maxIter, tol, top_n)``
    (amirgholami/PyHessian, single-batch mode): the gradient built once with
    ``backward(create_graph=True)`` and its graph kept; per iteration, per-parameter lists for
    the vectors, Gram-Schmidt against the eigenvectors found, one ``autograd.grad`` product, the
    Rayleigh quotient read with ``.item()``, and the relative-change test."""

    def product(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> torch.Tensor:
        return sum(torch.sum(a * b) for a, b in zip(xs, ys, strict=True))

    def normalization(v: list[torch.Tensor]) -> list[torch.Tensor]:
        s = product(v, v) ** 0.5
        s = s.cpu().item()
        return [vi / (s + 1e-6) for vi in v]

    def orthnormal(w: list[torch.Tensor], v_list: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        for v in v_list:
            w = [wi - product(w, v) * vi for wi, vi in zip(w, v, strict=True)]
        return normalization(w)

    model.eval()
    model.zero_grad()
    F.cross_entropy(model(x), y).backward(create_graph=True)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad for p in params]
    eigenvalues: list[float] = []
    eigenvectors: list[list[torch.Tensor]] = []
    while len(eigenvalues) < top_n:
        eigenvalue = None
        v = normalization([torch.randn(p.size(), device=p.device) for p in params])
        for _ in range(max_iter):
            v = orthnormal(v, eigenvectors)
            model.zero_grad()
            hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
            new = product(hv, v).cpu().item()
            v = normalization(list(hv))
            if eigenvalue is not None and abs(eigenvalue - new) / (abs(eigenvalue) + 1e-6) < tol:
                break
            eigenvalue = new
        eigenvalues.append(eigenvalue)
        eigenvectors.append(v)
    for p in params:  # the graph hangs on .grad: let it go
        p.grad = None
    return eigenvalues, eigenvectors
