"""The network of Zhou et al. (CVPR 2016), Figure 2: a shared encoder, concatenation fusion, and two
decoders (flow in pixels, matchability probability).

Default layer list (``width=1``, input 128×128; every convolution 3×3, stride 2 where the resolution
changes, no pooling, ReLU after every layer except the last of each decoder)::

    encoder (shared):   16@128  32@64  32@64  64@32  64@32  128@16  128@16  256@8
    fusion:             concat(code_a, code_b) -> 512@8
    flow decoder:       512@8  256@16  256@16  128@32  128@32  64@64  64@64  32@128  2@128
    match decoder:      256@8  128@16  128@16  64@32   64@32   32@64  32@64  16@128  1@128 + sigmoid

Choices the paper leaves open (all options of :class:`NetConfig`, defaults marked):

- padding: zero padding of 1 on every 3×3 convolution (keeps "same" resolution);
- up-sampling: ``"deconv"`` (default; 3×3 transposed convolution, stride 2, padding 1,
  output padding 1, exactly doubling) or ``"bilinear"`` (bilinear ×2 then a 3×3 convolution);
  resolution-preserving decoder layers are 3×3 convolutions (a stride-1 transposed convolution is
  the same operator);
- normalisation layers: none (the paper mentions none); ``norm="batch"`` is available;
- input normalisation: images in [0, 1] are standardised by the ImageNet mean/std inside the
  network, so callers always pass [0, 1] RGB;
- initialisation: Kaiming-normal (fan-out, ReLU) for hidden layers, biases 0; the last flow layer
  and the last matchability layer start at zero weight, so an untrained network predicts the zero
  flow and matchability 0.5 (a neutral start for both losses);
- ``flow_scale`` (default 1): the flow head's output is multiplied by it (pixels); larger values
  make the last layer's effective learning rate larger for the large displacements of real pairs.

Implementation notes (no effect on the function): in CPU training the transposed convolutions
compute their bias gradient as one sum (:class:`_ConvTranspose2d`; PyTorch's own CPU backward
of it is slow: ``bench/train_step.py``); under autocast (``runtime.precision=bf16``) the two
decoders return float32, so flows are composed and compared in float32.

Beyond the paper (off by default and in the ``paper`` preset): ``skips="corr"`` gives the flow
decoder what its 8×8 code cannot carry, the fine position of things. At each resolution the
decoder up-samples to but the last (16, 32 and 64 at input 128), it receives the source's encoder
features there and their local correlation with the target's (cosine similarity of the two
feature vectors at every displacement within ``±skip_radius`` pixels of that resolution, i.e.
±24, ±12 and ±6 input pixels for radius 3), through a 1×1 convolution added to the up-sampling
layer's output before its ReLU (+5 % FLOPs, about +40 % time of a CPU cycle step at width
1/2; the correlation is a serial numba kernel on a CPU). The 1×1 convolutions start at zero, so
a network with skips computes exactly what the same weights compute without them: a trained
paper network grows skips without changing its output (:meth:`CorrespondenceNet.grown_keys`)
and fine-tuning starts from where it was. Its measurements on the car data (grown on a trained
network and from the start): docs/RESULTS.md, "encoder skips with a local correlation".
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from cyclecorr._corr import correlation

__all__ = ["NetConfig", "CorrespondenceNet", "PAPER_LAYERS", "build_network", "ARCHITECTURES",
           "network_config_dict"]

# (out_channels, stride or up-sampling) for width=1; "up" doubles the resolution.
_ENCODER = [(16, 1), (32, 2), (32, 1), (64, 2), (64, 1), (128, 2), (128, 1), (256, 2)]
_FLOW_DECODER = [(512, 1), (256, "up"), (256, 1), (128, "up"), (128, 1), (64, "up"), (64, 1),
                 (32, "up"), (2, 1)]
_MATCH_DECODER = [(256, 1), (128, "up"), (128, 1), (64, "up"), (64, 1), (32, "up"), (32, 1),
                  (16, "up"), (1, 1)]

#: The paper's table as ``{part: [(channels, resolution), …]}`` at 128×128 input.
PAPER_LAYERS = {
    "encoder": [(16, 128), (32, 64), (32, 64), (64, 32), (64, 32), (128, 16), (128, 16), (256, 8)],
    "fusion": [(512, 8)],
    "flow_decoder": [(512, 8), (256, 16), (256, 16), (128, 32), (128, 32), (64, 64), (64, 64),
                     (32, 128), (2, 128)],
    "match_decoder": [(256, 8), (128, 16), (128, 16), (64, 32), (64, 32), (32, 64), (32, 64),
                      (16, 128), (1, 128)],
}

_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


@dataclass
class NetConfig:
    """Options of :class:`CorrespondenceNet` (defaults: the paper's network).

    Attributes:
        width: channel multiplier (hidden layers; the 2- and 1-channel outputs stay).
        image_size: input side in pixels (a multiple of 16; 128 in the paper).
        upsample: ``"deconv"`` or ``"bilinear"``.
        norm: ``"none"`` or ``"batch"``.
        flow_scale: multiplier on the flow head's output.
        skips: ``"none"`` (the paper) or ``"corr"`` (encoder features + local correlation into the
            flow decoder at each up-sampled resolution; see the module doc).
        skip_radius: displacement radius of the correlation, in pixels of each resolution.
    """

    #: the architecture's name in :func:`build_network` (not a field)
    arch: ClassVar[str] = "paper"

    width: float = 1.0
    image_size: int = 128
    upsample: str = "deconv"
    norm: str = "none"
    flow_scale: float = 1.0
    skips: str = "none"
    skip_radius: int = 3

    def __post_init__(self):
        if self.image_size % 16 or self.image_size <= 0:
            raise ValueError(f"image_size must be a positive multiple of 16, got {self.image_size}")
        if self.upsample not in ("deconv", "bilinear"):
            raise ValueError(f"upsample must be 'deconv' or 'bilinear', got {self.upsample!r}")
        if self.norm not in ("none", "batch"):
            raise ValueError(f"norm must be 'none' or 'batch', got {self.norm!r}")
        if self.width <= 0:
            raise ValueError(f"width must be positive, got {self.width}")
        if self.skips not in ("none", "corr"):
            raise ValueError(f"skips must be 'none' or 'corr', got {self.skips!r}")
        if not (isinstance(self.skip_radius, int) and 0 <= self.skip_radius <= 8):
            raise ValueError(f"skip_radius must be an integer in [0, 8], got {self.skip_radius!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def _ch(c: int, width: float, keep: bool) -> int:
    return c if keep else max(1, int(round(c * width)))


class _DeconvBiasGrad(torch.autograd.Function):
    """``F.conv_transpose2d`` (stride/padding/output padding as given, groups 1, dilation 1) whose
    backward computes the bias gradient itself: PyTorch 2.13's CPU backward of a transposed
    convolution reduces it slowly (e.g. 64→32 channels up to 128×128, batch 30: 103 ms for the
    whole backward, 59 ms with the bias gradient as one ``sum``; the data and weight gradients
    are unchanged, one ``convolution_backward`` call). An incoming gradient in another memory
    layout than the input is first made channels-last when the input is."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, output_padding):
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, output_padding, bias is not None)
        return F.conv_transpose2d(x, weight, bias, stride, padding, output_padding)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, output_padding, has_bias = ctx.conf
        if (x.is_contiguous(memory_format=torch.channels_last)
                and not grad.is_contiguous(memory_format=torch.channels_last)):
            grad = grad.contiguous(memory_format=torch.channels_last)
        need_x, need_w = ctx.needs_input_grad[:2]
        dx = dw = db = None
        if need_x or need_w:
            dx, dw, _ = torch.ops.aten.convolution_backward(
                grad, x, weight, None, list(stride), list(padding), [1, 1], True,
                list(output_padding), 1, [need_x, need_w, False])
        if has_bias and ctx.needs_input_grad[2]:
            db = grad.sum((0, 2, 3))
        return dx, dw, db, None, None, None


class _ConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` (same parameters and state-dict keys) whose CPU training backward
    takes :class:`_DeconvBiasGrad`'s faster bias gradient; elsewhere (CUDA, no gradient, groups
    or dilation) the stock operator. Under CPU autocast the operands are cast to the autocast
    dtype first, as autocast casts a convolution's (the Function saves what it computes with)."""

    def forward(self, x, output_size=None):
        if (output_size is None and x.device.type == "cpu" and torch.is_grad_enabled()
                and self.groups == 1 and self.dilation == (1, 1) and self.padding_mode == "zeros"
                and (x.requires_grad or self.weight.requires_grad)):
            w, b, plain = self.weight, self.bias, contextlib.nullcontext()
            if torch.is_autocast_enabled("cpu"):
                dt = torch.get_autocast_dtype("cpu")
                x, w = x.to(dt), w.to(dt)
                b = None if b is None else b.to(dt)
                plain = torch.autocast("cpu", enabled=False)
            with plain:
                return _DeconvBiasGrad.apply(x, w, b, self.stride, self.padding,
                                             self.output_padding)
        return super().forward(x, output_size)


class _Bilinear2x(nn.Module):
    def forward(self, x):
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def _make_stack(spec, in_ch: int, cfg: NetConfig, last_linear: bool) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    n = len(spec)
    for i, (out, stride) in enumerate(spec):
        last = last_linear and i == n - 1
        out_ch = _ch(out, cfg.width, keep=last)
        if stride == "up":
            if cfg.upsample == "deconv":
                conv = _ConvTranspose2d(in_ch, out_ch, 3, stride=2, padding=1, output_padding=1)
                layers.append(conv)
            else:
                layers += [_Bilinear2x(), nn.Conv2d(in_ch, out_ch, 3, padding=1)]
        else:
            layers.append(nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1))
        if not last:
            if cfg.norm == "batch":
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(nn.ReLU(inplace=True))
        in_ch = out_ch
    return nn.Sequential(*layers), in_ch


def local_correlation(a: torch.Tensor, b: torch.Tensor, radius: int) -> torch.Tensor:
    """Cosine similarity of ``a``'s feature at each pixel with ``b``'s at every displacement
    ``(dx, dy)`` in ``[-radius, radius]²``: ``(B, C, H, W)`` × 2 → ``(B, (2r+1)², H, W)``, channel
    ``(dy + r)·(2r+1) + (dx + r)`` for ``a(x, y)·b(x+dx, y+dy)``; outside ``b`` the similarity is 0.
    (The kernel is :func:`cyclecorr._corr.correlation`.)"""
    return correlation(F.normalize(a, dim=1, eps=1e-6), F.normalize(b, dim=1, eps=1e-6), radius)


def _stage_ends(seq: nn.Sequential, conv_ids: list[int]) -> list[int]:
    """Indices in ``seq`` of the last module (ReLU / norm / conv) belonging to each listed conv."""
    convs = [i for i, m in enumerate(seq) if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    ends = []
    for c in conv_ids:
        nxt = convs[c + 1] if c + 1 < len(convs) else len(seq)
        ends.append(nxt - 1)
    return ends


class CorrespondenceNet(nn.Module):
    """Dense flow + matchability between a source and a target image.

    ``forward(src, tgt)`` takes two ``(B, 3, S, S)`` float tensors in [0, 1]
    (``S = image_size``) and returns a dict:

    - ``"flow"``: ``(B, 2, S, S)``, flow_src→tgt in pixels (channel 0 = x, 1 = y);
    - ``"matchability"``: ``(B, 1, S, S)`` in [0, 1] (sigmoid);
    - ``"matchability_logits"``: ``(B, 1, S, S)``, the pre-sigmoid values.

    ``encode(images) -> (B, 256·width, S/16, S/16)`` and ``decode(code_src, code_tgt)`` expose the
    two halves so that a training step can encode each image of a quartet once.
    """

    #: flow and matchability come from separate decoders (:meth:`decode_flow`,
    #: :meth:`decode_matchability`); a network whose one decoder computes both says True
    decodes_jointly = False

    def __init__(self, config: NetConfig | None = None, **overrides):
        super().__init__()
        cfg = config or NetConfig()
        if overrides:
            cfg = NetConfig(**{**cfg.to_dict(), **overrides})
        self.config = cfg
        self.encoder, enc_ch = _make_stack(_ENCODER, 3, cfg, last_linear=False)
        self.flow_decoder, _ = _make_stack(_FLOW_DECODER, 2 * enc_ch, cfg, last_linear=True)
        self.match_decoder, _ = _make_stack(_MATCH_DECODER, 2 * enc_ch, cfg, last_linear=True)
        # skips: the decoder's up-sampling convs, and the encoder's last conv at the same resolution
        # (not at the last, full resolution: there the correlation took 0.34 s of the 0.46 s that
        # all four levels took in a width-1/2 cycle step, for ±3 px of reach at radius 3)
        ups = [i for i, (_, st) in enumerate(_FLOW_DECODER) if st == "up"][:-1]
        enc_res = [i for i in range(len(_ENCODER) - 1) if _ENCODER[i + 1][1] == 2][::-1][:len(ups)]
        self.flow_skips = nn.ModuleList()
        self._enc_taps: list[int] = []
        self._dec_taps: dict[int, int] = {}  # flow-decoder module index → skip level
        if cfg.skips == "corr":
            k = (2 * cfg.skip_radius + 1) ** 2
            self._enc_taps = _stage_ends(self.encoder, enc_res)
            convs = [m for m in self.flow_decoder
                     if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
            # add before the ReLU that follows the up-sampling conv (and its norm)
            self._dec_taps = {t: j for j, t in enumerate(_stage_ends(self.flow_decoder, ups))}
            for e, u in zip(enc_res, ups):
                enc_c = _ch(_ENCODER[e][0], cfg.width, keep=False)
                self.flow_skips.append(nn.Conv2d(enc_c + k, convs[u].out_channels, 1))
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        for head in (self.flow_decoder, self.match_decoder):
            last = [m for m in head if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))][-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        for m in self.flow_skips:  # start as "no skips": the paper network's function
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def grown_keys(self) -> list[str]:
        """State-dict keys of the zero-initialised skip layers: a model file without them (a network
        trained with ``skips="none"``) loads into this network with :func:`~cyclecorr.checkpoint.
        load_weights` ``(…, grow=True)`` and computes the same output."""
        return [f"flow_skips.{k}" for k in self.flow_skips.state_dict()]

    def set_input_size(self, size: int) -> CorrespondenceNet:
        """Run at ``size × size`` from now on (a positive multiple of 16); returns ``self``.

        Every layer is convolutional, so a network trained at one size runs at another: its flow is
        then in the new size's pixels and objects must appear at about the size they had in
        training to be matched well (e.g. 256 for whole photos in which the object fills half the
        frame, for a model trained on tight crops at 128). The weights are unchanged."""
        self.config = dataclasses.replace(self.config, image_size=int(size))
        return self

    def _check(self, name: str, x: torch.Tensor) -> None:
        s = self.config.image_size
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != s or x.shape[3] != s:
            raise ValueError(f"{name} must have shape (B, 3, {s}, {s}), got {tuple(x.shape)}")

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Encode ``(B, 3, S, S)`` images in [0, 1] to ``(B, 256·width, S/16, S/16)`` codes."""
        return self.encode_levels(images)[0]

    def encode_levels(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """``(code, skips)``: the code of :meth:`encode` and, with ``skips="corr"``, the encoder's
        features at 16, 32 and 64 pixels (input 128; coarse to fine), else ``()``."""
        self._check("images", images)
        x = (images - self.mean) / self.std
        if not self._enc_taps:
            return self.encoder(x), ()
        feats = {}
        for i, m in enumerate(self.encoder):
            x = m(x)
            if i in self._enc_taps:
                feats[i] = x
        return x, tuple(feats[i] for i in self._enc_taps)

    def encode_pair(self, src: torch.Tensor, tgt: torch.Tensor) -> tuple:
        """Check and encode a batch of pairs in one pass: ``(code_src, code_tgt, skips_src,
        skips_tgt)``, the arguments of :meth:`decode` / :meth:`decode_flow`."""
        self._check("src", src)
        self._check("tgt", tgt)
        if src.shape[0] != tgt.shape[0]:
            raise ValueError(f"batch sizes differ: src {tuple(src.shape)} vs tgt "
                             f"{tuple(tgt.shape)}")
        codes, skips = self.encode_levels(torch.cat((src, tgt), dim=0))
        code_src, code_tgt = codes.chunk(2, dim=0)
        halves = [f.chunk(2, dim=0) for f in skips]
        return code_src, code_tgt, tuple(h[0] for h in halves), tuple(h[1] for h in halves)

    def decode_flow(self, code_src: torch.Tensor, code_tgt: torch.Tensor,
                    skips_src: tuple = (), skips_tgt: tuple = ()) -> torch.Tensor:
        """Fuse two codes by concatenation and decode only the flow, ``(B, 2, S, S)`` pixels.
        A network with ``skips="corr"`` also needs both images' skip features
        (:meth:`encode_levels`)."""
        x = torch.cat((code_src, code_tgt), dim=1)
        if not self._dec_taps:
            flow = self.flow_decoder(x)
        else:
            n = len(self._dec_taps)
            if len(skips_src) != n or len(skips_tgt) != n:
                raise ValueError(f"this network (skips={self.config.skips!r}) needs {n} skip "
                                 f"features per image (encode_levels), got {len(skips_src)} and "
                                 f"{len(skips_tgt)}")
            r = self.config.skip_radius
            for i, m in enumerate(self.flow_decoder):
                j = self._dec_taps.get(i)
                if j is not None:  # the module here is the up-sampling layer's ReLU: add before it
                    a, b = skips_src[j], skips_tgt[j]
                    x = x + self.flow_skips[j](torch.cat((local_correlation(a, b, r), a), 1))
                x = m(x)
            flow = x
        # float32 even under autocast: flows are composed and compared in pixels
        flow = flow.float()
        if self.config.flow_scale != 1.0:
            flow = flow * self.config.flow_scale
        return flow

    def decode_matchability(self, code_src: torch.Tensor, code_tgt: torch.Tensor) -> torch.Tensor:
        """Fuse two codes by concatenation and decode only the matchability logits,
        ``(B, 1, S, S)`` (the probability is their sigmoid)."""
        return self.match_decoder(torch.cat((code_src, code_tgt), dim=1)).float()

    def decode(self, code_src: torch.Tensor, code_tgt: torch.Tensor,
               skips_src: tuple = (), skips_tgt: tuple = ()) -> dict[str, torch.Tensor]:
        """Fuse two codes by concatenation and decode flow and matchability (see class doc)."""
        flow = self.decode_flow(code_src, code_tgt, skips_src, skips_tgt)
        logits = self.decode_matchability(code_src, code_tgt)
        return {"flow": flow, "matchability": torch.sigmoid(logits),
                "matchability_logits": logits}

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.decode(*self.encode_pair(src, tgt))

    def layer_table(self) -> dict[str, list[tuple[int, int]]]:
        """``{part: [(out_channels, output_resolution), …]}`` measured by a forward pass."""
        s = self.config.image_size
        table: dict[str, list[tuple[int, int]]] = {}
        x = torch.zeros(1, 3, s, s, device=self.mean.device)

        def run(seq, inp, key):
            rows = []
            for m in seq:
                inp = m(inp)
                if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                    rows.append((inp.shape[1], inp.shape[-1]))
            table[key] = rows
            return inp

        with torch.no_grad():
            code = run(self.encoder, x, "encoder")
            fused = torch.cat((code, code), dim=1)
            table["fusion"] = [(fused.shape[1], fused.shape[-1])]
            run(self.flow_decoder, fused, "flow_decoder")
            run(self.match_decoder, fused, "match_decoder")
        return table

    def flops_per_pair(self) -> int:
        """Multiply-accumulate count ×2 of one forward pass on one (src, tgt) pair."""
        f = self.flops_by_part()
        return 2 * f["encoder"] + f["flow_decoder"] + f["match_decoder"] + f.get("flow_skips", 0)

    def flops_by_part(self) -> dict[str, int]:
        """Multiply-accumulate count ×2 of one forward pass of each part: ``encoder`` (one image),
        ``flow_decoder`` and ``match_decoder`` (one pair), and ``flow_skips`` (one pair; only with
        ``skips="corr"``); measured by hooks on a zero pair."""
        s = self.config.image_size
        parts = ("encoder", "flow_decoder", "match_decoder", "flow_skips")
        part_of = {m: name for name in parts for m in getattr(self, name).modules()}
        totals = dict.fromkeys(parts, 0)
        hooks = []

        def hook(m, inp, out):
            k = m.kernel_size[0] * m.kernel_size[1]
            cin = m.in_channels // m.groups
            if isinstance(m, nn.ConvTranspose2d):
                # each input pixel scatters k·cout values
                n = 2 * inp[0].shape[-1] * inp[0].shape[-2] * k * cin * m.out_channels
            else:
                n = 2 * out.shape[-1] * out.shape[-2] * k * cin * m.out_channels
            totals[part_of[m]] += n * out.shape[0]  # per call: the batch's images

        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                hooks.append(m.register_forward_hook(hook))
        try:
            with torch.no_grad():
                x = torch.zeros(1, 3, s, s, device=self.mean.device)
                self(x, x)
        finally:
            for h in hooks:
                h.remove()
        totals["encoder"] //= 2  # the pair's forward encodes both images in one batch
        if self.flow_skips:  # the correlations: a multiply and an add per channel and shift
            k = (2 * self.config.skip_radius + 1) ** 2
            for j, m in enumerate(self.flow_skips):
                side = s // 2 ** (len(self.flow_skips) - j)
                totals["flow_skips"] += 2 * k * (m.in_channels - k) * side * side
        else:
            del totals["flow_skips"]
        return totals


#: Network architectures by the ``arch`` name of a network configuration (absent: ``"paper"``).
ARCHITECTURES = ("paper", "costvol")


def build_network(config: dict | NetConfig | None = None) -> nn.Module:
    """The network that ``config`` describes; every place that constructs a network (training,
    model files, the matcher) goes through here.

    ``config``: a :class:`NetConfig`, or its dict (a model file's ``"net"`` metadata, a training
    configuration's ``net`` section); ``None`` is the paper's network. A dict's ``"arch"`` (one of
    :data:`ARCHITECTURES`, default ``"paper"``) chooses the architecture: ``"paper"`` is
    :class:`CorrespondenceNet`, ``"costvol"`` :class:`cyclecorr.costvol.CostVolumeNet` (its
    configuration, :class:`cyclecorr.costvol.CostVolumeConfig`, may be passed directly). Another
    architecture is added here, with its configuration class (whose ``arch`` class attribute
    names it), and must offer the interface the training cycle and the matcher use:
    ``config.image_size``, ``set_input_size``, ``grown_keys``, ``decodes_jointly``,
    ``encode_levels`` / ``encode_pair``, ``decode_flow`` / ``decode_matchability`` / ``decode``
    and ``forward(src, tgt) -> {"flow", "matchability", "matchability_logits"}``.
    """
    from cyclecorr.costvol import CostVolumeConfig, CostVolumeNet  # costvol imports this module

    if config is None:
        config = NetConfig()
    if isinstance(config, dict):
        fields = dict(config)
        arch = fields.pop("arch", "paper")
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown network architecture {arch!r} (known: {ARCHITECTURES})")
        cls = CostVolumeConfig if arch == "costvol" else NetConfig
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"network configuration: unknown field(s) {unknown} for the "
                             f"{arch!r} network (known: {sorted(known)})")
        config = cls(**fields)
    if isinstance(config, CostVolumeConfig):
        return CostVolumeNet(config)
    if not isinstance(config, NetConfig):
        raise TypeError(f"a network configuration is a NetConfig, a CostVolumeConfig or a dict, "
                        f"got {type(config).__name__}")
    return CorrespondenceNet(config)


def network_config_dict(config) -> dict:
    """A network configuration as :func:`build_network` reads it back (a model file's ``"net"``
    metadata): its fields, plus ``"arch"`` for any architecture but the paper's (whose files
    carry no ``"arch"``)."""
    d = config.to_dict()
    return d if config.arch == "paper" else {"arch": config.arch, **d}
