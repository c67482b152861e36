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
        # per level (the code, then each skip feature): the 4 (or 6) images' slices
        levels = [t.split(b) for t in (code, *skips)]
        si, ti = [0, 1, 2], [1, 2, 3]  # s1→r1, r1→r2, r2→s2
        if warp:
            si.append(4)
            ti.append(5)
        if pair:
            si.append(len(images) - 2)
            ti.append(len(images) - 1)
        if direct:
            si.append(0)
            ti.append(3)
        src = [torch.cat([lv[i] for i in si]) for lv in levels]
        tgt = [torch.cat([lv[i] for i in ti]) for lv in levels]
        if self.net.decodes_jointly:
            # one decoder computes flow and matchability (the cost-volume network): one pass
            # over all pairs, the matchability read where the loss reads it (r1→r2)
            out = self.net.decode(src[0], tgt[0], tuple(src[1:]), tuple(tgt[1:]))
            flow = out["flow"].split(b)
            matches = out["matchability"].split(b)
            match = matches[1]
            match_pair = matches[-2 if direct else -1] if pair else None
            match_direct = matches[-1] if direct else None
        else:
            flow = self.net.decode_flow(src[0], tgt[0], tuple(src[1:]), tuple(tgt[1:])).split(b)
            c_r1, c_r2 = levels[0][1], levels[0][2]
            # matchability only where the loss reads it (r1→r2): decoding the synthetic legs and
            # the self-warp pair as well cost ~9 % of a paper step's FLOPs and, with batch norm,
            # let those pairs into the matchability decoder's statistics
            match = torch.sigmoid(self.net.decode_matchability(c_r1, c_r2))
            # the render pair's matchability is supervised: decoded for it too
            match_pair = (torch.sigmoid(self.net.decode_matchability(levels[0][-2],
                                                                     levels[0][-1]))
                          if pair else None)
            match_direct = (torch.sigmoid(self.net.decode_matchability(levels[0][0],
                                                                       levels[0][3]))
                            if direct else None)
        res = {"flow_s1r1": flow[0], "flow_r1r2": flow[1], "flow_r2s2": flow[2],
               "match_r1r2": match}
        if warp:
            res["flow_warp"] = flow[3]
        if pair:
            res["flow_pair"], res["match_pair"] = flow[-2 if direct else -1], match_pair
        if direct:
            res["flow_direct"], res["match_direct"] = flow[-1], match_direct
        return res


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
