"""Losses of the 3D-guided cycle (paper Section 3), as pure functions returning ``(loss, metrics)``.

On a quartet ``<s1, s2, r1, r2>`` the network predicts ``F_s1r1``, ``F_r1r2``, ``F_r2s2`` and
``M_r1r2``; the renderer gives ``~F_s1s2`` and ``~M_s1s2``. With
``F_cyc = F_s1r1 ∘ F_r1r2 ∘ F_r2s2`` (see :func:`cyclecorr.geometry.compose_flow`):

- flow loss (truncated Euclidean): ``L_flow = Σ_p ~M(p) · min(‖~F(p) − F_cyc(p)‖², T²)``;
- matchability loss: ``M_cyc(p) = M_r1r2(p + F_s1r1(p))`` (``M_s1r1 = M_r2s2 = 1``, fixed) and
  ``L_mat = Σ_p BCE(M_cyc(p), ~M(p))``;
- ``L = L_flow + λ · L_mat``;
- two optional terms outside the paper (off by default): the leg prior ``leg_weight · L_leg`` and
  the self-warp term ``warp_weight · L_warp`` (see :class:`CycleLossConfig`).

:func:`cycle_objective` is the whole objective of a stage-2 training step, from the network's
predictions and the batch's targets; :func:`cycle_loss` is its cycle part on explicit tensors.
:func:`flow_regression_loss` is stage 1's: ``Σ_p ‖F(p) − F_target(p)‖²`` on a pair.

Reductions (left open by the paper): ``"sum"`` sums over the pixels of each quartet and averages
over the batch (the paper's Σ); ``"mean"`` averages over the pixels that count. Whether the
matchability loss moves the flow (through the sampling position ``p + F_s1r1(p)``) is the option
``match_grad_to_flow`` (default False: the position is detached, so ``L_mat`` trains the
matchability decoder and the encoder only).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from cyclecorr.geometry import compose_flow, compose_matchability

__all__ = [
    "CycleLossConfig",
    "cycle_objective",
    "check_cycle_batch",
    "flow_regression_loss",
    "WARP_KEYS",
    "PAIR_KEYS",
    "truncated_flow_loss",
    "matchability_loss",
    "cycle_loss",
    "compose_cycle",
    "leg_magnitudes",
]

_EPS = 1e-6

#: Batch keys of the self-warp pair (``cyclecorr.train.data.self_warp_pair``).
WARP_KEYS = ("warp_src", "warp_tgt", "flow_warp", "match_warp")
#: Batch keys of a render pair across instances (``cyclecorr.data.render_pairs``).
PAIR_KEYS = ("pair_src", "pair_tgt", "flow_pair", "match_pair")


@dataclass
class CycleLossConfig:
    """Options of the cycle objective (paper defaults where it gives one)."""

    #: T in pixels at 128×128 (paper: 15); scale it with the image size.
    truncation: float = 15.0
    #: λ, the matchability loss's weight relative to the flow loss.
    match_weight: float = 1.0
    #: ``"sum"`` (paper) or ``"mean"``.
    reduction: str = "sum"
    #: let the matchability loss back-propagate into ``F_s1r1`` (through the sampling position).
    match_grad_to_flow: bool = False
    #: out-of-image policy when reading a flow during composition.
    padding: str = "border"
    #: weight of a prior that the synthetic–real legs are small (not in the paper; 0 = off):
    #: ``Σ_p ~M(p) min(‖F_s1r1(p)‖², T²) + Σ_p min(‖F_r2s2(p)‖², T²)``, same reduction as the flow
    #: loss. It closes the shortcut where ``F_r1r2 ≈ 0`` and those legs carry the whole viewpoint
    #: change (docs/RESULTS.md, "The synthetic-leg shortcut").
    leg_weight: float = 0.0
    #: weight of the self-warp term (not in the paper; 0 = off): the truncated flow loss from a
    #: photo r1 to a re-framed copy of itself, whose flow is exact
    #: (``cyclecorr.train.data.self_warp_pair``), so the real-to-real leg also follows a photo's
    #: own content (docs/RESULTS.md, "Where the real pair's flow falls short").
    warp_weight: float = 0.0
    #: weight of a supervised term on render pairs across instances (not in the paper; 0 =
    #: off): two different models of one topology with their exact correspondence
    #: (``cyclecorr.data.render_pairs``, ``data.render_pairs``), scored by the truncated flow
    #: loss on the pair's matchable pixels plus ``match_weight ·`` the matchability
    #: cross-entropy, the same reductions as the cycle.
    pair_weight: float = 0.0
    #: weight of a supervised term on the quartet's own two renders (not in the paper; 0 = off):
    #: the network's direct prediction s1→s2 scored against the renderer's ``~F_s1s2`` and
    #: ``~M_s1s2`` by the truncated flow loss plus ``match_weight ·`` the matchability
    #: cross-entropy, the same reductions as the cycle. It keeps stage 1's render matching alive
    #: while the cycle fine-tunes, at the cost of one more decoded pair (s1 and s2 are already
    #: encoded for the cycle).
    direct_weight: float = 0.0
    #: truncation T of the supervised terms (self-warp, render pair and direct pair, whose flow
    #: is exact) in pixels; 0 = ``truncation``. A larger T keeps a gradient where the prediction
    #: is still far from the exact flow (large viewpoint changes), which the cycle's T = 15 px
    #: cuts off.
    supervised_truncation: float = 0.0

    def __post_init__(self):
        if self.reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {self.reduction!r}")
        if self.truncation <= 0:
            raise ValueError(f"truncation must be positive, got {self.truncation}")
        if self.leg_weight < 0:
            raise ValueError(f"leg_weight must be ≥ 0, got {self.leg_weight}")
        if self.warp_weight < 0:
            raise ValueError(f"warp_weight must be ≥ 0, got {self.warp_weight}")
        if self.pair_weight < 0:
            raise ValueError(f"pair_weight must be ≥ 0, got {self.pair_weight}")
        if self.direct_weight < 0:
            raise ValueError(f"direct_weight must be ≥ 0, got {self.direct_weight}")
        if not self.supervised_truncation >= 0:
            raise ValueError(f"supervised_truncation must be ≥ 0 (0: truncation), got "
                             f"{self.supervised_truncation}")

    @property
    def supervised_t(self) -> float:
        """T of the self-warp, render-pair and direct-pair terms."""
        return self.supervised_truncation or self.truncation

    def to_dict(self) -> dict:
        return asdict(self)


def _check_same(name_a, a, name_b, b):
    if a.shape != b.shape:
        raise ValueError(f"{name_a} {tuple(a.shape)} and {name_b} {tuple(b.shape)} must match")


def truncated_flow_loss(flow_pred: torch.Tensor, flow_gt: torch.Tensor,
                        mask: torch.Tensor | None = None, truncation: float = 15.0,
                        reduction: str = "sum") -> tuple[torch.Tensor, dict]:
    """``Σ_p mask(p) · min(‖flow_gt(p) − flow_pred(p)‖², T²)``.

    Args:
        flow_pred, flow_gt: ``(B, 2, H, W)`` in pixels.
        mask: ``(B, 1, H, W)`` weights (the ground-truth matchability), or ``None`` for all pixels.
        truncation: T in pixels.
        reduction: ``"sum"``: per-sample sum over pixels, averaged over the batch; ``"mean"``:
            average over the masked pixels (0 when the mask is empty).

    Returns:
        ``(loss, metrics)`` with metrics ``epe`` (mean end-point error on the mask), ``px1``/``px5``
        (fraction of masked pixels within 1 / 5 px) and ``truncated`` (fraction at the cap), floats.
    """
    _check_same("flow_pred", flow_pred, "flow_gt", flow_gt)
    if flow_pred.dim() != 4 or flow_pred.shape[1] != 2:
        raise ValueError(f"flows must have shape (B, 2, H, W), got {tuple(flow_pred.shape)}")
    if mask is None:
        mask = torch.ones_like(flow_pred[:, :1])
    if mask.shape != flow_pred[:, :1].shape:
        raise ValueError(f"mask must have shape {tuple(flow_pred[:, :1].shape)}, got "
                         f"{tuple(mask.shape)}")
    sq = (flow_pred - flow_gt).pow(2).sum(dim=1, keepdim=True)
    capped = torch.clamp(sq, max=truncation ** 2)
    weighted = capped * mask
    n = mask.sum()
    if reduction == "sum":
        loss = weighted.flatten(1).sum(1).mean()
    elif reduction == "mean":
        loss = weighted.sum() / n.clamp_min(_EPS)
    else:
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    with torch.no_grad():
        epe = sq.sqrt()
        denom = n.clamp_min(_EPS)
        metrics = {
            "epe": float((epe * mask).sum() / denom),
            "px1": float(((epe < 1).to(mask.dtype) * mask).sum() / denom),
            "px5": float(((epe < 5).to(mask.dtype) * mask).sum() / denom),
            "truncated": float(((sq >= truncation ** 2).to(mask.dtype) * mask).sum() / denom),
        }
    return loss, metrics


def matchability_loss(match_pred: torch.Tensor, match_gt: torch.Tensor,
                      reduction: str = "sum") -> tuple[torch.Tensor, dict]:
    """Per-pixel binary cross-entropy ``−[m log p + (1 − m) log(1 − p)]`` (p clamped to
    [1e-6, 1−1e-6]).

    Args:
        match_pred: ``(B, 1, H, W)`` probabilities.
        match_gt: ``(B, 1, H, W)`` targets in {0, 1} (or soft).
        reduction: ``"sum"`` (per-sample sum, batch mean) or ``"mean"`` (over all pixels).

    Returns:
        ``(loss, metrics)`` with ``match_acc`` (accuracy at 0.5) and ``match_pos`` (mean target).
    """
    _check_same("match_pred", match_pred, "match_gt", match_gt)
    p = match_pred.clamp(_EPS, 1 - _EPS)
    bce = -(match_gt * torch.log(p) + (1 - match_gt) * torch.log1p(-p))
    if reduction == "sum":
        loss = bce.flatten(1).sum(1).mean()
    elif reduction == "mean":
        loss = bce.mean()
    else:
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    with torch.no_grad():
        acc = ((match_pred > 0.5) == (match_gt > 0.5)).float().mean()
    return loss, {"match_acc": float(acc), "match_pos": float(match_gt.float().mean())}


def compose_cycle(flow_s1r1: torch.Tensor, flow_r1r2: torch.Tensor, flow_r2s2: torch.Tensor,
                  match_r1r2: torch.Tensor, padding: str = "border",
                  match_grad_to_flow: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The composed cycle ``F_s1r1 ∘ F_r1r2 ∘ F_r2s2`` and ``M_r1r2(p + F_s1r1(p))``.

    All tensors ``(B, C, H, W)`` at one resolution. Returns ``(flow_s1s2, match_s1s2)``.
    """
    flow = compose_flow(compose_flow(flow_s1r1, flow_r1r2, padding), flow_r2s2, padding)
    pos = flow_s1r1 if match_grad_to_flow else flow_s1r1.detach()
    match = compose_matchability(None, match_r1r2, pos)
    return flow, match


def cycle_loss(flow_s1r1: torch.Tensor, flow_r1r2: torch.Tensor, flow_r2s2: torch.Tensor,
               match_r1r2: torch.Tensor, flow_s1s2_gt: torch.Tensor, match_s1s2_gt: torch.Tensor,
               config: CycleLossConfig | None = None) -> tuple[torch.Tensor, dict]:
    """The cycle objective on a batch of quartets: ``L_flow + λ · L_mat`` (see module doc).

    Args:
        flow_s1r1, flow_r1r2, flow_r2s2: ``(B, 2, H, W)`` predicted flows.
        match_r1r2: ``(B, 1, H, W)`` predicted matchability r1→r2 (probabilities).
        flow_s1s2_gt: ``(B, 2, H, W)`` renderer flow; match_s1s2_gt: ``(B, 1, H, W)`` in {0, 1}.

    Returns:
        ``(loss, metrics)``: metrics ``loss``, ``loss_flow``, ``loss_match`` (``loss_leg`` when
        ``leg_weight > 0``), those of the two component losses and the mean flow magnitude of
        each leg, ``leg_s1r1``, ``leg_r1r2``, ``leg_r2s2`` (pixels; a collapsing ``leg_r1r2``
        signals the synthetic-leg shortcut, see :class:`CycleLossConfig`).
    """
    cfg = config or CycleLossConfig()
    flow_cyc, match_cyc = compose_cycle(flow_s1r1, flow_r1r2, flow_r2s2, match_r1r2,
                                        cfg.padding, cfg.match_grad_to_flow)
    l_flow, m_flow = truncated_flow_loss(flow_cyc, flow_s1s2_gt, match_s1s2_gt,
                                         cfg.truncation, cfg.reduction)
    l_match, m_match = matchability_loss(match_cyc, match_s1s2_gt, cfg.reduction)
    loss = l_flow + cfg.match_weight * l_match
    extra = {}
    if cfg.leg_weight > 0:
        zero = torch.zeros_like(flow_s1r1)
        l_a, _ = truncated_flow_loss(flow_s1r1, zero, match_s1s2_gt, cfg.truncation, cfg.reduction)
        l_b, _ = truncated_flow_loss(flow_r2s2, zero, None, cfg.truncation, cfg.reduction)
        l_leg = l_a + l_b
        loss = loss + cfg.leg_weight * l_leg
        extra["loss_leg"] = float(l_leg.detach())
    metrics = {"loss": float(loss.detach()), "loss_flow": float(l_flow.detach()),
               "loss_match": float(l_match.detach()), **extra,
               **m_flow, **m_match, **leg_magnitudes(flow_s1r1, flow_r1r2, flow_r2s2)}
    return loss, metrics


@torch.no_grad()
def leg_magnitudes(flow_s1r1: torch.Tensor, flow_r1r2: torch.Tensor, flow_r2s2: torch.Tensor
                   ) -> dict:
    """Mean end-point magnitude (pixels, over all pixels) of each of the three predicted legs."""
    return {f"leg_{k}": float(f.detach().norm(dim=1).mean())
            for k, f in (("s1r1", flow_s1r1), ("r1r2", flow_r1r2), ("r2s2", flow_r2s2))}


def check_cycle_batch(batch: dict, config: CycleLossConfig, keys: tuple = WARP_KEYS,
                      pair_keys: tuple = PAIR_KEYS) -> None:
    """Raise ``ValueError`` when ``config.warp_weight > 0`` and ``batch`` lacks some of the
    self-warp pair's ``keys`` (default all of :data:`WARP_KEYS`: images and targets), or
    ``config.pair_weight > 0`` and it lacks some of the render pair's ``pair_keys``."""
    if config.warp_weight > 0:
        missing = [k for k in keys if k not in batch]
        if missing:
            raise ValueError(f"loss.warp_weight > 0 needs the self-warp pair in the batch; "
                             f"missing {missing} (AugmentedDataset(self_warp=...) adds them)")
    if config.pair_weight > 0:
        missing = [k for k in pair_keys if k not in batch]
        if missing:
            raise ValueError(f"loss.pair_weight > 0 needs a render pair in the batch; missing "
                             f"{missing} (data.render_pairs; AugmentedDataset(pairs=...) adds "
                             "them)")


def cycle_objective(pred: dict, batch: dict, config: CycleLossConfig | None = None
                    ) -> tuple[torch.Tensor, dict]:
    """The whole objective of one batch of quartets: :func:`cycle_loss` plus ``warp_weight ·`` the
    truncated flow loss of the self-warp pair when ``config.warp_weight > 0``, plus
    ``pair_weight ·`` (the truncated flow loss + ``match_weight ·`` the matchability
    cross-entropy) of the render pair across instances when ``config.pair_weight > 0``, plus
    ``direct_weight ·`` the same two terms on the quartet's own renders s1→s2 when
    ``config.direct_weight > 0``.

    Args:
        pred: the network's predictions, ``flow_s1r1``, ``flow_r1r2``, ``flow_r2s2``
            ``(B, 2, H, W)`` and ``match_r1r2`` ``(B, 1, H, W)``; with the self-warp term also
            ``flow_warp`` (the flow ``warp_src → warp_tgt``); with the pair term ``flow_pair`` and
            ``match_pair`` (probabilities) of ``pair_src → pair_tgt``.
        batch: the targets, ``flow_s1s2`` ``(B, 2, H, W)`` and ``match_s1s2`` ``(B, 1, H, W)``;
            with the self-warp term also ``flow_warp`` and ``match_warp`` (:data:`WARP_KEYS`);
            with the pair term ``flow_pair`` and ``match_pair`` (:data:`PAIR_KEYS`).

    Returns:
        ``(loss, metrics)``: the metrics of :func:`cycle_loss` (``loss`` is the total) and, with
        the self-warp term, ``loss_warp`` and its flow metrics as ``warp_epe``, ``warp_px1``,
        ``warp_px5``, ``warp_truncated``; with the pair term ``loss_pair`` and ``pair_epe``,
        ``pair_px5``, …, ``pair_match_acc``; with the direct term ``loss_direct`` and
        ``direct_epe``, …, ``direct_match_acc``.
    """
    cfg = config or CycleLossConfig()
    check_cycle_batch(batch, cfg, ("flow_warp", "match_warp"), ("flow_pair", "match_pair"))
    loss, metrics = cycle_loss(pred["flow_s1r1"], pred["flow_r1r2"], pred["flow_r2s2"],
                               pred["match_r1r2"], batch["flow_s1s2"], batch["match_s1s2"], cfg)
    if cfg.warp_weight > 0:
        l_w, m_w = truncated_flow_loss(pred["flow_warp"], batch["flow_warp"], batch["match_warp"],
                                       cfg.supervised_t, cfg.reduction)
        loss = loss + cfg.warp_weight * l_w
        metrics = {**metrics, "loss": float(loss.detach()), "loss_warp": float(l_w.detach()),
                   **{f"warp_{k}": v for k, v in m_w.items()}}
    if cfg.pair_weight > 0:
        l_p, m_p = _supervised_pair_loss(pred["flow_pair"], pred["match_pair"],
                                         batch["flow_pair"], batch["match_pair"], cfg)
        loss = loss + cfg.pair_weight * l_p
        metrics = {**metrics, "loss": float(loss.detach()), "loss_pair": float(l_p.detach()),
                   **{f"pair_{k}": v for k, v in m_p.items()}}
    if cfg.direct_weight > 0:
        l_d, m_d = _supervised_pair_loss(pred["flow_direct"], pred["match_direct"],
                                         batch["flow_s1s2"], batch["match_s1s2"], cfg)
        loss = loss + cfg.direct_weight * l_d
        metrics = {**metrics, "loss": float(loss.detach()), "loss_direct": float(l_d.detach()),
                   **{f"direct_{k}": v for k, v in m_d.items()}}
    return loss, metrics


def _supervised_pair_loss(flow, match, flow_gt, match_gt, cfg: CycleLossConfig
                          ) -> tuple[torch.Tensor, dict]:
    """A pair with an exact flow: the truncated flow loss (T = ``cfg.supervised_t``) on its
    matchable pixels plus ``match_weight ·`` the matchability cross-entropy; the metrics of both."""
    l_f, m_f = truncated_flow_loss(flow, flow_gt, match_gt, cfg.supervised_t, cfg.reduction)
    l_m, m_m = matchability_loss(match, match_gt, cfg.reduction)
    return l_f + cfg.match_weight * l_m, {**m_f, **m_m}


def flow_regression_loss(flow_pred: torch.Tensor, flow_target: torch.Tensor,
                         valid: torch.Tensor | None = None, reduction: str = "mean"
                         ) -> tuple[torch.Tensor, dict]:
    """Stage 1's Euclidean regression of a predicted flow onto a target flow (paper: SIFT flow):
    ``L = Σ_p valid(p) · ‖F(p) − F_target(p)‖²`` (:func:`truncated_flow_loss` without a cap;
    ``reduction="sum"``: per-pair sum, batch mean; ``"mean"``: per-pixel mean).

    Returns ``(loss, metrics)`` with ``loss`` and the flow metrics ``epe``, ``px1``, ``px5``,
    ``truncated``."""
    loss, metrics = truncated_flow_loss(flow_pred, flow_target, valid, truncation=float("inf"),
                                        reduction=reduction)
    return loss, {"loss": float(loss.detach()), **metrics}
