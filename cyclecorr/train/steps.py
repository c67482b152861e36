"""The two training objectives as functions of (network, batch) → (loss, metrics).

Stage 1 (initialisation): the encoder + flow decoder regress SIFT flow on real pairs with a
Euclidean loss (``cyclecorr.losses.flow_regression_loss``). Stage 2: the 3D-guided cycle on
quartets (``cyclecorr.losses.cycle_objective``). The functions here only predict; the objectives
are in :mod:`cyclecorr.losses`.

Batches are dicts of tensors: stage 1 ``src``, ``tgt`` (B,3,S,S) in [0, 1] and ``flow`` (B,2,S,S)
(the SIFT flow src→tgt, pixels); stage 2 ``s1``, ``s2``, ``r1``, ``r2`` (B,3,S,S), ``flow_s1s2``
(B,2,S,S) and ``match_s1s2`` (B,1,S,S).
"""
from __future__ import annotations

import torch

from cyclecorr.checkpoint import unwrap_model
from cyclecorr.losses import (
    CycleLossConfig,
    check_cycle_batch,
    cycle_objective,
    flow_regression_loss,
)
from cyclecorr.train.modules import CycleModule

__all__ = ["cycle_predictions", "cycle_step_loss", "stage1_step_loss"]


def cycle_predictions(model, s1, r1, r2, s2, warp_src=None, warp_tgt=None, pair_src=None,
                      pair_tgt=None, direct: bool = False) -> dict[str, torch.Tensor]:
    """Predict ``F_s1r1``, ``F_r1r2``, ``F_r2s2`` and ``M_r1r2`` in one batched pass.

    Each of the four images is encoded once (4B encoder passes instead of 6B), then the three
    pairs' flows are decoded together as one batch of 3B and the matchability of r1→r2 alone
    (through ``CycleModule``; a DDP-wrapped plain network decodes all three). Works with a plain,
    compiled or DDP-wrapped network: the encoder and decoders are called through ``model`` when
    it is wrapped by DDP so gradients are synchronised (DDP wraps ``forward``; see
    ``CycleModule``). With ``warp_src,
    warp_tgt`` (the self-warp pair, ``CycleLossConfig.warp_weight``) that pair is encoded and
    decoded in the same pass and returned as ``"flow_warp"``; likewise the render pair
    (``"flow_pair"``, ``"match_pair"``) and, with ``direct=True``, the quartet's own renders
    s1→s2 (``"flow_direct"``, ``"match_direct"``).
    """
    extra = {} if warp_src is None else {"warp_src": warp_src, "warp_tgt": warp_tgt}
    if pair_src is not None:
        extra.update(pair_src=pair_src, pair_tgt=pair_tgt)
    if direct:
        extra["direct"] = True
    if isinstance(getattr(model, "module", model), CycleModule):
        return model(s1, r1, r2, s2, **extra)
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        if extra:
            raise ValueError("the self-warp, render and direct pairs need the network wrapped "
                             "as a CycleModule under DDP (as cyclecorr.train does)")
        # DDP around the plain network: go through its forward so gradients are synchronised
        b = s1.shape[0]
        out = model(torch.cat((s1, r1, r2)), torch.cat((r1, r2, s2)))
        flow = out["flow"].split(b)
        return {"flow_s1r1": flow[0], "flow_r1r2": flow[1], "flow_r2s2": flow[2],
                "match_r1r2": out["matchability"].split(b)[1]}
    return CycleModule(unwrap_model(model))(s1, r1, r2, s2, **extra)


def cycle_step_loss(model, batch: dict, config: CycleLossConfig | None = None
                    ) -> tuple[torch.Tensor, dict]:
    """Predict the cycle's flows for a batch of quartets (and the self-warp pair's when
    ``config.warp_weight > 0``, the render pair's when ``config.pair_weight > 0``, the quartet's
    own renders s1→s2 when ``config.direct_weight > 0``) and score them
    with :func:`cyclecorr.losses.cycle_objective`."""
    cfg = config or CycleLossConfig()
    check_cycle_batch(batch, cfg)
    extra = {}
    if cfg.warp_weight > 0:
        extra.update(warp_src=batch["warp_src"], warp_tgt=batch["warp_tgt"])
    if cfg.pair_weight > 0:
        extra.update(pair_src=batch["pair_src"], pair_tgt=batch["pair_tgt"])
    if cfg.direct_weight > 0:
        extra["direct"] = True
    pred = cycle_predictions(model, batch["s1"], batch["r1"], batch["r2"], batch["s2"], **extra)
    return cycle_objective(pred, batch, cfg)


def stage1_step_loss(model, batch: dict, reduction: str = "mean") -> tuple[torch.Tensor, dict]:
    """Predict the flow of a batch of stage-1 pairs and score it with
    :func:`cyclecorr.losses.flow_regression_loss` against ``batch["flow"]`` (SIFT flow, or the
    renderer's), ignoring pixels where ``batch["valid"]`` (optional, (B,1,S,S)) is 0. Only the
    encoder and flow decoder receive gradients (the matchability decoder is not used)."""
    out = model(batch["src"], batch["tgt"])
    return flow_regression_loss(out["flow"], batch["flow"], batch.get("valid"), reduction)
