"""The two training objectives as functions of (network, batch) → (loss, metrics).

Stage 1 (initialisation): the encoder + flow decoder regress SIFT flow on real pairs with a
Euclidean loss. Stage 2: the 3D-guided cycle on quartets (``cyclecorr.losses.cycle_loss``).

Batches are dicts of tensors: stage 1 ``src``, ``tgt`` (B,3,S,S) in [0, 1] and ``flow`` (B,2,S,S)
(the SIFT flow src→tgt, pixels); stage 2 ``s1``, ``s2``, ``r1``, ``r2`` (B,3,S,S), ``flow_s1s2``
(B,2,S,S) and ``match_s1s2`` (B,1,S,S).
"""
from __future__ import annotations

import torch

from cyclecorr.checkpoint import unwrap_model
from cyclecorr.losses import CycleLossConfig, cycle_loss, truncated_flow_loss

__all__ = ["cycle_predictions", "cycle_step_loss", "stage1_step_loss", "WARP_KEYS"]


def cycle_predictions(model, s1, r1, r2, s2, warp_src=None, warp_tgt=None
                      ) -> dict[str, torch.Tensor]:
    """Predict ``F_s1r1``, ``F_r1r2``, ``F_r2s2`` and ``M_r1r2`` in one batched pass.

    Each of the four images is encoded once (4B encoder passes instead of 6B), then the three
    pairs' flows are decoded together as one batch of 3B and the matchability of r1→r2 alone
    (through ``CycleModule``; a DDP-wrapped plain network decodes all three). Works with a plain,
    compiled or DDP-wrapped network: the encoder and decoders are called through ``model`` when it is wrapped by DDP so
    gradients are synchronised (DDP wraps ``forward``; see ``CycleModule``). With ``warp_src,
    warp_tgt`` (the self-warp pair, ``CycleLossConfig.warp_weight``) that pair is encoded and
    decoded in the same pass and returned as ``"flow_warp"``.
    """
    from cyclecorr.train.modules import CycleModule  # the DDP-friendly 4-encode/3-decode view

    warp = () if warp_src is None else (warp_src, warp_tgt)
    if isinstance(getattr(model, "module", model), CycleModule):
        return model(s1, r1, r2, s2, *warp)
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        if warp:
            raise ValueError("the self-warp pair needs the network wrapped as a CycleModule "
                             "under DDP (as cyclecorr.train does)")
        # DDP around the plain network: go through its forward so gradients are synchronised
        b = s1.shape[0]
        out = model(torch.cat((s1, r1, r2)), torch.cat((r1, r2, s2)))
        flow = out["flow"].split(b)
        return {"flow_s1r1": flow[0], "flow_r1r2": flow[1], "flow_r2s2": flow[2],
                "match_r1r2": out["matchability"].split(b)[1]}
    return CycleModule(unwrap_model(model))(s1, r1, r2, s2, *warp)


#: Batch keys of the self-warp pair (``cyclecorr.train.data.self_warp_pair``).
WARP_KEYS = ("warp_src", "warp_tgt", "flow_warp", "match_warp")


def cycle_step_loss(model, batch: dict, config: CycleLossConfig | None = None
                    ) -> tuple[torch.Tensor, dict]:
    """The cycle objective of one batch of quartets (see ``cyclecorr.losses.cycle_loss``), plus
    ``warp_weight ·`` the truncated flow loss of the self-warp pair when the config asks for it
    (then the batch must hold :data:`WARP_KEYS`; metrics ``loss_warp``, ``warp_epe``, …)."""
    cfg = config or CycleLossConfig()
    use_warp = cfg.warp_weight > 0
    if use_warp:
        missing = [k for k in WARP_KEYS if k not in batch]
        if missing:
            raise ValueError(f"loss.warp_weight > 0 needs the self-warp pair in the batch; "
                             f"missing {missing} (AugmentedDataset(self_warp=...) adds them)")
    warp = (batch["warp_src"], batch["warp_tgt"]) if use_warp else (None, None)
    p = cycle_predictions(model, batch["s1"], batch["r1"], batch["r2"], batch["s2"], *warp)
    loss, metrics = cycle_loss(p["flow_s1r1"], p["flow_r1r2"], p["flow_r2s2"], p["match_r1r2"],
                               batch["flow_s1s2"], batch["match_s1s2"], cfg)
    if use_warp:
        l_w, m_w = truncated_flow_loss(p["flow_warp"], batch["flow_warp"], batch["match_warp"],
                                       cfg.truncation, cfg.reduction)
        loss = loss + cfg.warp_weight * l_w
        metrics = {**metrics, "loss": float(loss.detach()), "loss_warp": float(l_w.detach()),
                   **{f"warp_{k}": v for k, v in m_w.items()}}
    return loss, metrics


def stage1_step_loss(model, batch: dict, reduction: str = "mean") -> tuple[torch.Tensor, dict]:
    """Euclidean regression of the network's flow onto SIFT flow (paper stage 1).

    ``L = Σ_p ‖F(p) − F_sift(p)‖²`` (``reduction="sum"``: per-pair sum, batch mean; ``"mean"``:
    per-pixel mean). Only the encoder and flow decoder receive gradients (the matchability decoder
    is not used). Pixels where ``batch["valid"]`` (optional, (B,1,S,S)) is 0 are ignored.
    """
    out = model(batch["src"], batch["tgt"])
    mask = batch.get("valid")
    loss, metrics = truncated_flow_loss(out["flow"], batch["flow"], mask,
                                        truncation=float("inf"), reduction=reduction)
    metrics = {"loss": float(loss.detach()), **metrics}
    return loss, metrics
