"""A training-free memory bank of the frozen teacher's patch features (PatchCore-style), and its nearest-neighbour map.

Every normal training patch is described by the teacher's features at the configured strides (1/8 and
1/16 by default), each averaged over its 3×3 neighbourhood, the coarser maps upsampled to the finest
one's grid and concatenated. A greedy
k-centre coreset keeps a small subset that still covers them all; a test patch's anomaly value is
its Euclidean distance to the nearest kept patch. See docs/design.md, "Memory bank and fusion".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: Query rows per distance block: bounds the (rows × bank) float32 matrix of the eager search to a few hundred MB.
QUERY_CHUNK = 4096
#: Query rows per block of the bf16 shortlist: its (rows × bank) product stays in the CPU's cache for the top-k selection.
SHORTLIST_CHUNK = 1024
#: Strides of the teacher's three feature maps, in the order the teacher returns them.
TEACHER_STRIDES = (4, 8, 16)
#: Bank rows per query that the bf16 search shortlists for the exact float32 comparison.
BF16_CANDIDATES = 4


@dataclass(frozen=True)
class BankConfig:
    """Whether a run gets a memory bank, how it is subsampled, and how its map is smoothed."""

    enabled: bool = False  # build a bank after training and fuse its kNN map with the segmentation map
    strides: tuple[int, ...] = (8, 16)  # teacher maps that describe a patch; the finest sets the grid
    fraction: float = 0.1  # share of the training patches the coreset keeps ...
    max_size: int = 8192  # ... but at most this many: the search cost per image grows with the bank
    projection: int = 32  # the coreset selects on a random projection to this many dimensions (faster, nearly the same choice)
    pool: int = 300_000  # the coreset selects among at most this many random patches (a small pool misses rare normal ones)
    blur_sigma: float = 4.0  # Gaussian blur of the kNN map, in pixels of a 256² map (scaled with the map's size)

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ValueError(f"bank.fraction must be in (0, 1], got {self.fraction}")
        if self.max_size < 1 or self.projection < 1 or self.pool < 1:
            raise ValueError("bank.max_size, bank.projection and bank.pool must be positive")
        if self.blur_sigma < 0:
            raise ValueError(f"bank.blur_sigma must be ≥ 0, got {self.blur_sigma}")
        if not self.strides or list(self.strides) != sorted(set(self.strides)) or not set(self.strides) <= set(TEACHER_STRIDES):
            raise ValueError(f"bank.strides must be increasing values among {TEACHER_STRIDES}, got {self.strides}")


def patch_features(teacher_feats: list[torch.Tensor], strides: tuple[int, ...]) -> torch.Tensor:
    """The teacher's maps at ``strides``, 3×3-averaged, on the finest one's grid and concatenated: (N, ΣC, H/s, W/s), float32."""
    finest, *coarser = (F.avg_pool2d(teacher_feats[TEACHER_STRIDES.index(s)].float(), 3, stride=1, padding=1,
                                     count_include_pad=False) for s in strides)
    grid = finest.shape[-2:]
    return torch.cat([finest] + [F.interpolate(f, size=grid, mode="bilinear", align_corners=False) for f in coarser], dim=1)


def nearest_distances(queries: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor) -> torch.Tensor:
    """Euclidean distance of each query row to its nearest bank row, float32: (Q, D), (K, D), (K,) → (Q,).

    The nearest row is found with ‖q − b‖² = ‖q‖² + ‖b‖² − 2 q·b (one matrix product), its distance then
    taken directly from q − b: the expanded form cancels badly for near neighbours, and this way two
    backends agree to float32 rounding. Distances are float32 whatever autocast says; under bf16 autocast
    the candidates are shortlisted by a bf16 product (:func:`bf16_shortlist`), about half the search's time.
    """
    device = queries.device.type
    exporting = torch.compiler.is_exporting()
    shortlist = torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.bfloat16 and not exporting
    with torch.autocast(device, enabled=False):
        queries = queries.float()
        if shortlist:
            return bf16_shortlist(list(queries.split(SHORTLIST_CHUNK)), bank)
        rows = [queries] if exporting else queries.split(QUERY_CHUNK)  # a dynamic batch cannot be split in a traced graph
        nearest = torch.cat([torch.addmm(bank_sq, q, bank.t(), alpha=-2).argmin(dim=1) for q in rows])
        return (queries - bank[nearest]).square().sum(dim=1).sqrt()


def bf16_shortlist(rows: list[torch.Tensor], bank: torch.Tensor) -> torch.Tensor:
    """Float32 distance to the nearest of the ``BF16_CANDIDATES`` bank rows that a bf16 product ranks nearest: blocks of (Q, D), (K, D) → (ΣQ,).

    Features are centred on the bank's mean first, which keeps the bf16 values small; ‖b‖² rides in the same
    product as an extra column. The true nearest row is missed only when several rows lie within bf16 rounding
    of it, and then the distance returned is that of a row as near to rounding.
    """
    centre = bank.mean(dim=0)
    centred = bank - centre
    keys = torch.cat([-2 * centred, centred.square().sum(dim=1, keepdim=True)], dim=1).bfloat16().t()
    distances = []
    for q in rows:
        lifted = torch.cat([q - centre, q.new_ones(len(q), 1)], dim=1).bfloat16()
        candidates = (lifted @ keys).topk(BF16_CANDIDATES, dim=1, largest=False).indices
        distances.append((q.unsqueeze(1) - bank[candidates]).square().sum(dim=2).min(dim=1).values)
    return torch.cat(distances).sqrt()


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """A normalised 1-D Gaussian of radius ⌈4σ⌉, float32."""
    radius = max(1, math.ceil(4 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def upsample_blur_matrix(n_in: int, n_out: int, sigma: float) -> torch.Tensor:
    """(n_out, n_in) float32: linear upsampling (align_corners=False) to ``n_out`` samples, then a Gaussian blur, edges replicated.

    Both steps are linear and separable, so a map's bilinear upsampling and 2-D blur is ``M_h @ map @ M_w.T``: two
    small matrix products instead of a convolution over the large map (several times faster on a CPU).
    """
    impulses = torch.eye(n_in).unsqueeze(1)  # (n_in, 1, n_in): each row one input sample set to 1
    columns = F.interpolate(impulses, size=n_out, mode="linear", align_corners=False)
    if sigma > 0:
        kernel = gaussian_kernel(sigma)
        r = len(kernel) // 2
        columns = F.conv1d(F.pad(columns, (r, r), mode="replicate"), kernel.view(1, 1, -1))
    return columns[:, 0].t().contiguous()


def upsample_blur(maps: torch.Tensor, size: tuple[int, int], sigma: float) -> torch.Tensor:
    """(N, 1, h, w) float32 maps upsampled bilinearly to ``size`` and blurred with a Gaussian of ``sigma`` pixels (σ ≤ 0: no blur)."""
    rows = upsample_blur_matrix(maps.shape[-2], size[0], sigma).to(maps.device)
    cols = upsample_blur_matrix(maps.shape[-1], size[1], sigma).to(maps.device)
    return rows @ maps @ cols.t()


def greedy_coreset(features: torch.Tensor, size: int, projection: int, generator: torch.Generator,
                   on_progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Indices of ``size`` rows chosen by greedy k-centre selection (each next row the one farthest from those chosen).

    Distances are taken on a random Gaussian projection to ``projection`` dimensions (Johnson–Lindenstrauss: nearly
    the same distances, several times faster); the first row is drawn at random. ``on_progress(n)`` is told every
    1,024 selections.
    """
    n, dim = features.shape
    size = min(size, n)
    x = features.float()
    if projection < dim:
        x = x @ torch.randn(dim, projection, generator=generator).to(x.device) / math.sqrt(projection)
    squared = x.square().sum(dim=1)
    distance_to = lambda i: torch.addmv(squared, x, x[i], alpha=-2).add_(squared[i])  # noqa: E731 - one pass over x
    first = int(torch.randint(n, (1,), generator=generator))
    chosen = torch.empty(size, dtype=torch.long)
    chosen[0] = first
    min_dist = distance_to(first)
    for i in range(1, size):
        nxt = int(min_dist.argmax())
        chosen[i] = nxt
        torch.minimum(min_dist, distance_to(nxt), out=min_dist)
        if on_progress is not None and i % 1024 == 0:
            on_progress(1024)
    return chosen


class MemoryBank(nn.Module):
    """Coreset patches of the normal training images; maps a batch's teacher features to nearest-patch distances."""

    def __init__(self, patches: torch.Tensor, config: BankConfig) -> None:
        super().__init__()
        self.register_buffer("patches", patches.float().contiguous())
        self.strides = config.strides  # settings (config.bank), not weights
        self.blur_sigma = config.blur_sigma

    @classmethod
    def empty(cls, size: int, dim: int, config: BankConfig) -> MemoryBank:
        """A bank of the given shape to load saved weights into."""
        return cls(torch.zeros(size, dim), config)

    @property
    def megabytes(self) -> float:
        return self.patches.numel() * self.patches.element_size() / 2**20

    def forward(self, teacher_feats: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """Nearest-patch distance of every patch, upsampled (bilinear) to ``size`` and blurred: (N, 1, *size) float32."""
        feats = patch_features(teacher_feats, self.strides)
        n, dim, h, w = feats.shape
        queries = feats.permute(0, 2, 3, 1).reshape(-1, dim)
        bank_sq = self.patches.square().sum(dim=1)
        distances = nearest_distances(queries, self.patches, bank_sq).view(n, 1, h, w)
        return upsample_blur(distances, size, self.blur_sigma * min(size) / 256)


def coreset_size(total: int, config: BankConfig) -> int:
    """How many of ``total`` training patches the bank keeps: ``fraction`` of them, at most ``max_size`` and the pool."""
    return max(1, min(config.max_size, config.pool, total, round(config.fraction * total)))


@torch.no_grad()
def build_memory_bank(patches: torch.Tensor, config: BankConfig, seed: int,
                      on_progress: Callable[[int], None] | None = None) -> tuple[MemoryBank, int]:
    """A bank from all training patches (M, D): a random pool of at most ``config.pool``, then the greedy coreset.

    Returns the bank and M; the kept size is :func:`coreset_size`.
    """
    generator = torch.Generator().manual_seed(seed)
    total = len(patches)
    pool = patches
    if total > config.pool:
        pool = patches[torch.randperm(total, generator=generator)[: config.pool].to(patches.device)]
    chosen = greedy_coreset(pool, coreset_size(total, config), config.projection, generator, on_progress).to(pool.device)
    return MemoryBank(pool[chosen], config), total
