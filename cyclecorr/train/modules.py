"""Thin ``nn.Module`` views of :class:`~cyclecorr.model.CorrespondenceNet` for each stage, so that
``DistributedDataParallel`` wraps exactly the computation (and parameters) a stage uses.

- :class:`CycleModule`: ``forward(s1, r1, r2, s2)`` encodes each of the 4B images once, decodes
  the flow of the three pairs (s1→r1, r1→r2, r2→s2) as one batch of 3B and the matchability of
  r1→r2 alone (the paper fixes ``M_s1r1 = M_r2s2 = 1``, so no loss reads the other two): every
  parameter gets a gradient.
- :class:`FlowModule` (stage 1): ``forward(src, tgt) -> {"flow"}`` through the encoder and the flow
  decoder only; the matchability decoder is not a submodule, so DDP does not wait for its
  (absent) gradients.

Both share the parameters of the wrapped network (no copies).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from cyclecorr.model import CorrespondenceNet

__all__ = ["CycleModule", "FlowModule"]


class CycleModule(nn.Module):
    """``forward(s1, r1, r2, s2)`` → ``{"flow_s1r1", "flow_r1r2", "flow_r2s2"}`` (B,2,S,S) and
    ``"match_r1r2"`` (B,1,S,S). With ``warp_src, warp_tgt`` (a photo and its re-framed copy, see
    ``CycleLossConfig.warp_weight``) that pair is encoded and decoded in the same pass and its
    flow returned as ``"flow_warp"`` (one forward, so DDP sees a single graph). With
    ``pair_src, pair_tgt`` (a render pair across instances, ``CycleLossConfig.pair_weight``) that
    pair too, returned as ``"flow_pair"`` and ``"match_pair"``. With ``direct=True`` the
    quartet's own renders s1→s2 (already encoded) are decoded as well, returned as
    ``"flow_direct"`` and ``"match_direct"`` (``CycleLossConfig.direct_weight``)."""

    def __init__(self, net: CorrespondenceNet):
        super().__init__()
        self.net = net

    def forward(self, s1, r1, r2, s2, warp_src=None, warp_tgt=None, pair_src=None,
                pair_tgt=None, direct: bool = False) -> dict[str, torch.Tensor]:
        b = s1.shape[0]
        warp = warp_src is not None and warp_tgt is not None
        pair = pair_src is not None and pair_tgt is not None
        images = ((s1, r1, r2, s2) + ((warp_src, warp_tgt) if warp else ())
                  + ((pair_src, pair_tgt) if pair else ()))
        code, skips = self.net.encode_levels(torch.cat(images))
        # per level (the code, then each skip feature): the 4 (or 6, 8) images' slices
        levels = [t.split(b) for t in (code, *skips)]
        # the decoded pairs, by name: (source image, target image) indices into ``images``
        pairs = {"s1r1": (0, 1), "r1r2": (1, 2), "r2s2": (2, 3)}
        if warp:
            pairs["warp"] = (4, 5)
        if pair:
            pairs["pair"] = (len(images) - 2, len(images) - 1)
        if direct:
            pairs["direct"] = (0, 3)
        # matchability only where a loss reads it: r1→r2 (the paper fixes the other legs' to 1)
        # and the supervised render and direct pairs
        matched = [n for n in ("r1r2", "pair", "direct") if n in pairs]
        src = [torch.cat([lv[i] for i, _ in pairs.values()]) for lv in levels]
        tgt = [torch.cat([lv[j] for _, j in pairs.values()]) for lv in levels]
        if self.net.decodes_jointly:
            # one decoder computes flow and matchability (the cost-volume network): one pass
            # over all pairs
            out = self.net.decode(src[0], tgt[0], tuple(src[1:]), tuple(tgt[1:]))
            flow = dict(zip(pairs, out["flow"].split(b)))
            every = dict(zip(pairs, out["matchability"].split(b)))
            match = {n: every[n] for n in matched}
        else:
            flow = dict(zip(pairs, self.net.decode_flow(src[0], tgt[0], tuple(src[1:]),
                                                        tuple(tgt[1:])).split(b)))
            # decoding the synthetic legs and the self-warp pair as well cost ~9 % of a paper
            # step's FLOPs and, with batch norm, let those pairs into the matchability
            # decoder's statistics: one call per pair that a loss reads
            match = {n: torch.sigmoid(self.net.decode_matchability(levels[0][pairs[n][0]],
                                                                   levels[0][pairs[n][1]]))
                     for n in matched}
        return {**{f"flow_{n}": f for n, f in flow.items()},
                **{f"match_{n}": m for n, m in match.items()}}


class FlowModule(nn.Module):
    """Stage-1 view: ``forward(src, tgt) -> {"flow": (B,2,S,S)}`` (encoder + flow decoder; a
    network that decodes flow and matchability jointly is seen whole)."""

    def __init__(self, net: CorrespondenceNet):
        super().__init__()
        if net.decodes_jointly:  # every parameter takes part in the flow
            self.net = net
        else:
            self.encoder = net.encoder
            self.flow_decoder = net.flow_decoder
            self.flow_skips = net.flow_skips  # empty without skips
        self._net = [net]  # not a submodule: keeps the match decoder out of DDP's view

    def forward(self, src, tgt) -> dict[str, torch.Tensor]:
        net = self._net[0]
        # net.flow_decoder is self.flow_decoder (shared parameters), so DDP sees its gradients
        return {"flow": net.decode_flow(*net.encode_pair(src, tgt))}
