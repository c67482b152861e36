"""Correspondence methods under evaluation: one interface for baselines and networks.

A *method* has a ``name``, an evaluation side ``size`` (128, the paper's network input), a
``describe() -> dict`` (recorded in every result: parameters, checkpoint hash, …) and::

    predict_batch(src, tgt) -> (flow, matchability)

with ``src``, ``tgt`` float tensors ``(B, 3, S, S)`` in [0, 1], ``flow`` ``(B, 2, S, S)`` in
pixels (channel 0 = x, 1 = y, ``flow_src→tgt(p) = q − p``) and ``matchability`` ``(B, 1, S, S)``
in [0, 1], or ``None`` for methods without one.

Implementations:

- :class:`ZeroFlow`: ``flow = 0`` (every pixel matches the same pixel of the target), no
  matchability;
- :class:`SiftFlowMethod`: SIFT flow (Liu et al., TPAMI 2011, :mod:`cyclecorr.siftflow`, published
  parameters) per pair; its matchability is a fixed monotone map of the SIFT match cost ``c``
  (L1 distance of the ×255 descriptors): ``m = 2^(−c / c_half)``, so ``m = 1`` at ``c = 0``,
  ``m = 0.5`` at ``c = c_half`` (default 1700: about the median match cost of 128×128 car
  pairs) and decreasing; average precision depends only on the order, so ``c_half`` only moves
  the accuracy at 0.5;
- :class:`NetworkMethod`: a trained network from a model file (its SHA-256 is recorded), run
  batched by a :class:`~cyclecorr.matcher.Matcher`; ``NAME=PATH+siftflow`` is the same network
  with its flow refined by SIFT flow searched around it (the matcher's ``refine``, recorded).

:func:`dense_match` runs any method on two images of any size, with the matcher's resizing.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from cyclecorr.checkpoint import shipped_model_path
from cyclecorr.matcher import (
    REFINE_DEFAULT,
    Matcher,
    format_refine,
    parse_refine,
    resize_tensor,
    to_image_pixels,
    to_tensor_image,
)
from cyclecorr.model import network_config_dict
from cyclecorr.siftflow import SiftFlowParams, sift_flow

__all__ = ["ZeroFlow", "SiftFlowMethod", "NetworkMethod", "predict_in_batches", "make_method",
           "model_path", "dense_match"]


def _check_pair(src: torch.Tensor, tgt: torch.Tensor, size: int | None = None) -> None:
    for name, t in (("src", src), ("tgt", tgt)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4 or t.shape[1] != 3:
            raise ValueError(f"{name} must be a (B, 3, S, S) tensor, got "
                             f"{tuple(getattr(t, 'shape', ()))}")
        if size is not None and tuple(t.shape[-2:]) != (size, size):
            raise ValueError(f"{name} must be {size}×{size}, got {tuple(t.shape[-2:])}")
    if src.shape != tgt.shape:
        raise ValueError(f"src {tuple(src.shape)} and tgt {tuple(tgt.shape)} differ")


class ZeroFlow:
    """The zero-flow baseline: ``flow = 0`` everywhere; matchability ``None``."""

    name = "zero"

    def __init__(self, size: int = 128):
        self.size = size

    def describe(self) -> dict:
        return {"name": self.name, "kind": "baseline", "size": self.size}

    def predict_batch(self, src, tgt):
        _check_pair(src, tgt)
        b, _, h, w = src.shape
        return torch.zeros(b, 2, h, w), None


class SiftFlowMethod:
    """SIFT flow per pair (CPU, published parameters); matchability ``2^(−cost / c_half)``."""

    name = "siftflow"

    def __init__(self, size: int = 128, params=None, c_half: float = 1700.0):
        self.size = size
        self.params = params or SiftFlowParams()
        if not c_half > 0:
            raise ValueError(f"c_half must be positive, got {c_half}")
        self.c_half = float(c_half)

    def describe(self) -> dict:
        return {"name": self.name, "kind": "baseline", "size": self.size,
                "params": self.params.to_dict(),
                "matchability": f"2^(-cost/{self.c_half:g}) of the SIFT L1 match cost"}

    def matchability_from_cost(self, cost: np.ndarray) -> np.ndarray:
        """``m = 2^(−c / c_half)`` (monotone decreasing in the cost, 0.5 at ``c_half``)."""
        return np.exp2(-np.asarray(cost, dtype=np.float64) / self.c_half).astype(np.float32)

    def predict_batch(self, src, tgt):
        _check_pair(src, tgt)
        flows, mats = [], []
        for s, t in zip(src, tgt):
            a = (s.permute(1, 2, 0).clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
            b = (t.permute(1, 2, 0).clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
            res = sift_flow(a, b, self.params)
            flows.append(torch.from_numpy(np.asarray(res.flow, np.float32)))
            mats.append(torch.from_numpy(self.matchability_from_cost(res.cost))[None])
        return torch.stack(flows), torch.stack(mats)


class NetworkMethod:
    """A trained network (from a model file or in memory) as a method: a
    :class:`~cyclecorr.matcher.Matcher` with a row name and a description.

    Args:
        net: the network, or a :class:`~cyclecorr.matcher.Matcher` already holding one (then
            ``device``, ``channels_last``, ``size`` and ``precision`` are the matcher's).
        meta: the model file's metadata (``sha256``, ``stage``, ``step`` …), recorded by
            :meth:`describe`.
        name: row name in the tables (default ``"model"``).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, …
        channels_last: run the convolutions in channels-last memory format (faster on CPU).
        size: run the network at ``size × size`` (default: the size it was trained at).
        precision: ``"float32"`` (the protocol) or ``"bf16"`` (autocast; recorded by
            :meth:`describe`; see :data:`cyclecorr._runtime.PRECISIONS`).
    """

    def __init__(self, net, meta: dict | None = None, name: str = "model", device="auto",
                 channels_last: bool = True, size: int | None = None,
                 precision: str = "float32"):
        if not isinstance(net, Matcher):
            net = Matcher(net, meta, device=device, input_size=size, precision=precision,
                          channels_last=channels_last)
        elif meta is not None:
            net.meta = dict(meta)
        self.matcher = net
        self.name = name

    @property
    def net(self) -> torch.nn.Module:
        return self.matcher.net

    @property
    def size(self) -> int:
        return self.matcher.size

    @property
    def meta(self) -> dict:
        return self.matcher.meta

    @property
    def device(self) -> torch.device:
        return self.matcher.device

    @property
    def precision(self) -> str:
        return self.matcher.precision

    @classmethod
    def from_file(cls, path: str | os.PathLike | None = None, name: str | None = None,
                  device="auto", size: int | None = None, precision: str = "float32"
                  ) -> NetworkMethod:
        """Load a model file (``None``: the model shipped with the package for cars)."""
        matcher = Matcher.from_checkpoint(path, device=device, input_size=size,
                                          precision=precision)
        if name is None:
            stage = matcher.meta.get("stage")
            name = f"model-stage{stage}" if stage is not None else "model"
        return cls(matcher, name=name)

    def describe(self) -> dict:
        keep = ("sha256", "path", "stage", "step", "code_version", "data_manifest_sha256")
        out = {"name": self.name, "kind": "network", "size": self.size,
               "precision": self.precision, "net": network_config_dict(self.net.config),
               **{k: self.meta[k] for k in keep if k in self.meta}}
        if self.matcher.refine is not None:
            level, window, stop = self.matcher.refine
            out["refine"] = {"method": "siftflow", "level": level, "window": window,
                             "stop_level": stop,
                             "params": SiftFlowParams().to_dict(),
                             "matchability": "the network's"}
        if self.matcher.bidirectional:
            tau, sigma, spread = self.matcher.bidirectional_px
            out["bidirectional"] = {
                "rule": "tgt->src matched too (same network and refinement), inverted by a "
                        "Gaussian splat; averaged with the forward flow where the two lie within "
                        "tau px and the splatted pixels spread by at most max_spread_px, the "
                        "forward flow elsewhere", "tau_px": tau, "sigma_px": sigma,
                "max_spread_px": spread, "matchability": "the forward pass's"}
        return out

    def predict_batch(self, src, tgt):
        _check_pair(src, tgt, self.size)
        out = self.matcher.predict(src, tgt)
        return out["flow"].cpu(), out["matchability"].cpu()


def _split_bidirectional(spec: str) -> tuple[str, bool]:
    """Split a ``"+bidir"`` suffix (:class:`~cyclecorr.matcher.Matcher` ``bidirectional``) off a
    method spec."""
    return (spec[:-len("+bidir")], True) if spec.endswith("+bidir") else (spec, False)


def _split_refine(spec: str) -> tuple[str, str | None]:
    """Split a ``"+siftflow"`` / ``"+siftflow:LEVEL:WINDOW[:STOP]"`` suffix off a method spec."""
    head, sep, tail = spec.rpartition("+siftflow")
    if not sep or (tail and not tail.startswith(":")):
        return spec, None
    return head, "siftflow" + tail


def predict_in_batches(method, src: torch.Tensor, tgt: torch.Tensor, batch_size: int = 16):
    """Run ``method.predict_batch`` on ``(N, 3, S, S)`` stacks in chunks; returns the concatenation
    (matchability ``None`` when the method has none)."""
    flows, mats = [], []
    for i in range(0, len(src), batch_size):
        f, m = method.predict_batch(src[i:i + batch_size], tgt[i:i + batch_size])
        flows.append(f)
        mats.append(m)
    flow = torch.cat(flows) if flows else torch.zeros(0, 2, *src.shape[-2:])
    mat = None if (not mats or mats[0] is None) else torch.cat(mats)
    return flow, mat


def _refined(method: NetworkMethod, refine: str) -> NetworkMethod:
    """The same network with its flow refined by SIFT flow (:class:`~cyclecorr.matcher.Matcher`
    ``refine``), named ``NAME+siftflow`` (``NAME+siftflow:LEVEL:WINDOW:STOP`` off the default)."""
    m = method.matcher
    m.refine = parse_refine(refine)
    spec = "siftflow" if m.refine == REFINE_DEFAULT else format_refine(m.refine)
    method.name = f"{method.name}+{spec}"
    return method


def model_path(spec: str | None) -> Path:
    """The model file a method names: a path, or ``"shipped"`` / ``"shipped:CATEGORY"`` for a
    model shipped with the package (``None`` and ``"shipped"``: the car model)."""
    if spec is None or spec.strip() in ("shipped", ""):
        return shipped_model_path("car")
    spec = spec.strip()
    if spec.startswith("shipped:"):
        return shipped_model_path(spec[len("shipped:"):].strip())
    return Path(spec)


def make_method(spec: str, model: str | None = None, size: int = 128, device="auto",
                net_size: int | None = None, precision: str = "float32"):
    """A method from a short name: ``"zero"``, ``"siftflow"``, ``"model"`` (the file ``model``, or
    the shipped car model when ``model`` is None or ``"shipped"``), or ``"model:PATH"`` /
    ``"NAME=PATH"`` for extra model files (e.g. ``"stage1=runs/stage1.safetensors"``); any PATH
    may be ``shipped:CATEGORY`` (e.g. ``"chair=shipped:chair"``, :func:`model_path`). A network
    spec ending in ``+siftflow`` (or ``+siftflow:LEVEL:WINDOW[:STOP]``) is that network with its
    flow refined by SIFT flow around it (``Matcher(refine=…)``, e.g. ``"model+siftflow"``); a
    network spec ending in ``+bidir`` matches both ways and averages where the two directions
    agree (``Matcher(bidirectional=True)``, e.g. ``"model+siftflow+bidir"``).
    ``size``: the baselines' input side; ``net_size``: the networks' (default: the size each was
    trained at); ``precision``: the networks' (``"float32"`` or ``"bf16"``)."""
    spec, bidirectional = _split_bidirectional(spec.strip())
    if bidirectional:
        base = make_method(spec, model, size, device, net_size, precision)
        if not isinstance(base, NetworkMethod):
            raise ValueError(f"method {spec}+bidir: +bidir runs a network both ways; {spec!r} "
                             f"is not a network")
        base.matcher.bidirectional = True
        base.name = f"{base.name}+bidir"
        return base
    spec, refine = _split_refine(spec)
    if refine is not None:
        base = make_method(spec, model, size, device, net_size, precision)
        if not isinstance(base, NetworkMethod):
            raise ValueError(f"method {spec}+{refine}: +siftflow refines a network's flow; "
                             f"{spec!r} is not a network")
        return _refined(base, refine)
    if spec == "zero":
        return ZeroFlow(size)
    if spec in ("siftflow", "sift-flow", "sift"):
        return SiftFlowMethod(size)
    if spec == "model":
        return NetworkMethod.from_file(model_path(model), name="model", device=device,
                                       size=net_size, precision=precision)
    if spec.startswith("model:"):
        return NetworkMethod.from_file(model_path(spec[len("model:"):]), device=device,
                                       size=net_size, precision=precision)
    if "=" in spec:
        name, path = spec.split("=", 1)
        return NetworkMethod.from_file(model_path(path), name=name.strip(), device=device,
                                       size=net_size, precision=precision)
    raise ValueError(f"unknown method {spec!r}: use zero, siftflow, model, model:PATH or NAME=PATH")


def dense_match(method, image_a, image_b) -> dict:
    """Run ``method`` on two images of any size: both are resized to ``method.size`` and the
    result is expressed in the original pixels, by the functions :class:`~cyclecorr.matcher.
    Matcher` uses (:func:`~cyclecorr.matcher.resize_tensor`, :func:`~cyclecorr.matcher.
    to_image_pixels`).

    Returns ``{"flow": (H_a, W_a, 2) float32 (q − p, into b's pixels), "matchability": (H_a, W_a)
    float32 or None}``."""
    a, b = to_tensor_image(image_a, "image_a"), to_tensor_image(image_b, "image_b")
    size = int(method.size)
    flow, mat = method.predict_batch(resize_tensor(a, size)[None], resize_tensor(b, size)[None])
    return to_image_pixels(flow, mat, a.shape[-2:], b.shape[-2:])
