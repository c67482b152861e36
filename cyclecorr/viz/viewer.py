"""The interactive correspondence viewer of the HTML pages: hover over (or click) a point of the
source and the page marks its match in the target, with its matchability.

Plain HTML and a small hand-written script, no server and no network: the page works when opened
from ``file://``. Each viewer embeds its flow (and matchability) as JSON in a
``<script type="application/json">`` block:

* ``w, h``: source size; ``tw, th``: target size (pixels).
* ``step``: the flow is stored on the source pixels ``(i·step, j·step)`` (``step = 1``: every
  pixel; larger images are subsampled so that the grid is at most :data:`MAX_GRID` per side) and
  read bilinearly in between; ``gw, gh``: the grid's size.
* ``q``: flow units per pixel; ``flow``: base64 of little-endian int16 ``(gh, gw, 2)``, channel
  0 = x, ``round(flow · q)``; ``match``: base64 of uint8 ``(gh, gw)``, ``round(m · 255)``, or null.

Conventions as everywhere: pixel centres at integer coordinates, ``flow(p) = q − p``. A pointer at
CSS position ``c`` over an image displayed ``D`` CSS px wide for ``W`` image pixels is at pixel
``c·W/D − 0.5``; the viewer snaps it to the nearest pixel centre, so a click on source pixel
``p`` puts the target marker at exactly ``p + flow(p)`` (to the quantisation ``1/q``). The target
marker of each pinned point carries ``data-x``/``data-y`` (target pixels) and ``data-m``
(matchability, or empty), its source marker the source pixel; the browser test reads them.
"""
from __future__ import annotations

import base64
import html
import json

import numpy as np

__all__ = ["viewer_data", "viewer_html", "VIEWER_JS", "VIEWER_CSS", "MAX_GRID", "FLOW_UNITS"]

MAX_GRID = 256
"""Largest side of the embedded flow grid (larger sources are subsampled)."""
FLOW_UNITS = 16
"""Stored flow units per pixel (1/16 px steps, ±2047 px range)."""


def viewer_data(flow_hw2: np.ndarray, matchability: np.ndarray | None,
                target_shape: tuple[int, int]) -> dict:
    """The JSON object a viewer embeds (see the module doc) for a flow ``(H, W, 2)`` in pixels,
    an optional matchability ``(H, W)`` in [0, 1] and the target's ``(H_t, W_t)``."""
    f = np.asarray(flow_hw2, np.float64)
    if f.ndim != 3 or f.shape[2] != 2:
        raise ValueError(f"flow must be (H, W, 2), got {f.shape}")
    h, w = f.shape[:2]
    step = max(1, int(np.ceil(max(h, w) / MAX_GRID)))
    g = f[::step, ::step]
    gh, gw = g.shape[:2]
    q = np.clip(np.round(np.nan_to_num(g) * FLOW_UNITS), -32767, 32767).astype("<i2")
    out = {"w": int(w), "h": int(h), "tw": int(target_shape[1]), "th": int(target_shape[0]),
           "step": step, "gw": int(gw), "gh": int(gh), "q": FLOW_UNITS,
           "flow": base64.b64encode(np.ascontiguousarray(q).tobytes()).decode("ascii"),
           "match": None}
    if matchability is not None:
        m = np.asarray(matchability, np.float64)
        if m.shape != (h, w):
            raise ValueError(f"matchability is {m.shape}, flow is {(h, w)}")
        mq = np.round(np.clip(np.nan_to_num(m[::step, ::step]), 0, 1) * 255).astype(np.uint8)
        out["match"] = base64.b64encode(mq.tobytes()).decode("ascii")
    return out


def viewer_html(index: int, source_src: str, target_src: str, data: dict,
                height: int = 300) -> str:
    """The HTML of one viewer: the two images (relative links ``source_src``, ``target_src``)
    side by side at ``height`` CSS px (small images are enlarged), the readout line and the
    embedded data. The page must include :data:`VIEWER_CSS` and :data:`VIEWER_JS` once."""
    wa = int(round(data["w"] * height / data["h"]))
    wb = int(round(data["tw"] * height / data["th"]))
    esc = html.escape
    return (
        f"<div class='viewer' id='viewer-{index}'>"
        f"<div class='vrow'>"
        f"<figure class='vbox src'><img src='{esc(source_src)}' width='{wa}' height='{height}' "
        f"alt='source' draggable='false'><figcaption>source ({data['w']}×{data['h']} px): "
        f"point here</figcaption></figure>"
        f"<figure class='vbox tgt'><img src='{esc(target_src)}' width='{wb}' height='{height}' "
        f"alt='target' draggable='false'><figcaption>target ({data['tw']}×{data['th']} px): "
        f"its match</figcaption></figure>"
        f"<svg class='vlines'></svg></div>"
        f"<p class='vhelp'>Move the pointer over the source: the marker in the target is where "
        f"the flow sends that pixel (green ring: matchable, red ring and dashed line: probably "
        f"no match). Click to pin points. <button type='button' class='vclear'>clear pins"
        f"</button></p><p class='readout'></p>"
        f"<script type='application/json' class='vdata'>{json.dumps(data)}</script></div>")


VIEWER_CSS = """.viewer{margin:.5em 0 1em}
.vrow{position:relative;display:flex;gap:24px;align-items:flex-start;overflow-x:auto}
.vbox{position:relative;margin:0;padding:0;border:0;background:none}
.vbox img{display:block;height:auto;max-width:none;cursor:crosshair;user-select:none}
.vbox.tgt img{cursor:default}
.vlines{position:absolute;left:0;top:0;width:100%;height:100%;pointer-events:none;overflow:visible}
.mk{position:absolute;box-sizing:border-box;width:16px;height:16px;margin:-8px 0 0 -8px;
border:2px solid #fff;
border-radius:50%;box-shadow:0 0 0 1px #000;pointer-events:none;font:bold 10px sans-serif;
color:#fff;text-shadow:0 0 2px #000}
.mk span{position:absolute;left:15px;top:-3px}
.mk.live{border-style:dashed}.mk.no{border-color:#ff4136}.mk.yes{border-color:#2ecc40}
.vhelp{font-size:.85em;color:#444;margin:.3em 0}
.readout{font-size:.9em;min-height:1.4em;margin:.2em 0;font-family:monospace}"""

# The viewer script (hand-written; no libraries). Each .viewer decodes its embedded flow once,
# maps pointer positions to source pixels, and draws markers (DOM elements) and lines (SVG).
VIEWER_JS = r"""(function(){
"use strict";
var COLORS=["#e6194b","#3cb44b","#ffe119","#4363d8","#f58231","#911eb4","#46f0f0","#f032e6",
"#bcf60c","#fabebe","#008080","#e6beff"];
function bytes(b64){var s=atob(b64),a=new Uint8Array(s.length);
for(var i=0;i<s.length;i++)a[i]=s.charCodeAt(i);return a;}
function setup(v){
var d=JSON.parse(v.querySelector("script.vdata").textContent);
var fb=bytes(d.flow),dv=new DataView(fb.buffer),n=d.gw*d.gh,fl=new Float32Array(2*n);
for(var i=0;i<2*n;i++)fl[i]=dv.getInt16(2*i,true)/d.q;
var mt=d.match?bytes(d.match):null;
var row=v.querySelector(".vrow"),si=v.querySelector(".src img"),ti=v.querySelector(".tgt img");
var svg=v.querySelector(".vlines"),out=v.querySelector(".readout"),pins=[],live=null;
function grid(a,c,x,y){/* bilinear on the stored grid; c = channels, k = channel */
var gx=Math.min(Math.max(x/d.step,0),d.gw-1),gy=Math.min(Math.max(y/d.step,0),d.gh-1);
var x0=Math.floor(gx),y0=Math.floor(gy),x1=Math.min(x0+1,d.gw-1),y1=Math.min(y0+1,d.gh-1);
var ax=gx-x0,ay=gy-y0,r=[];
for(var k=0;k<c;k++){var g=function(xx,yy){return a[(yy*d.gw+xx)*c+k];};
r.push((1-ay)*((1-ax)*g(x0,y0)+ax*g(x1,y0))+ay*((1-ax)*g(x0,y1)+ax*g(x1,y1)));}
return r;}
function match(x,y){var f=grid(fl,2,x,y),m=mt?grid(mt,1,x,y)[0]/255:null;
return {x:x,y:y,tx:x+f[0],ty:y+f[1],m:m};}
function pixel(e){var r=si.getBoundingClientRect();
/* browsers that report whole CSS pixels truncate: the pointer lies in [c, c+1) */
var cx=e.clientX+(Number.isInteger(e.clientX)?0.5:0);
var cy=e.clientY+(Number.isInteger(e.clientY)?0.5:0);
var x=Math.round((cx-r.left)*d.w/r.width-0.5),y=Math.round((cy-r.top)*d.h/r.height-0.5);
return [Math.min(Math.max(x,0),d.w-1),Math.min(Math.max(y,0),d.h-1)];}
function css(img,W,H,x,y){/* image pixel -> position inside its box, and inside the row */
var r=img.getBoundingClientRect(),rr=row.getBoundingClientRect();
var px=(x+0.5)*r.width/W,py=(y+0.5)*r.height/H;
return {l:px,t:py,X:r.left-rr.left+row.scrollLeft+px,Y:r.top-rr.top+py};}
function marker(box,pos,color,cls,label){var m=document.createElement("div");
m.className="mk "+cls;m.style.left=pos.l+"px";m.style.top=pos.t+"px";m.style.background=color;
if(label){var s=document.createElement("span");s.textContent=label;m.appendChild(s);}
box.appendChild(m);return m;}
function fmt(p){var s="source ("+p.x+", "+p.y+") \u2192 target ("+p.tx.toFixed(1)+", "
+p.ty.toFixed(1)+")";
var inside=p.tx>=-0.5&&p.ty>=-0.5&&p.tx<=d.tw-0.5&&p.ty<=d.th-0.5;
if(!inside)s+=", outside the target";
if(p.m!==null)s+=", matchability "+p.m.toFixed(2)
+(p.m>=0.5?" (matchable)":" (probably no match: hidden or not there)");
return s;}
function draw(){v.querySelectorAll(".mk").forEach(function(e){e.remove();});
while(svg.firstChild)svg.removeChild(svg.firstChild);
var all=pins.map(function(p,i){return [p,COLORS[i%COLORS.length],"pin",String(i+1)];});
if(live)all.push([live,"rgba(255,255,255,0.6)","live",""]);
all.forEach(function(a){var p=a[0],ok=p.m===null||p.m>=0.5;
var s=css(si,d.w,d.h,p.x,p.y),t=css(ti,d.tw,d.th,p.tx,p.ty);
var ms=marker(si.parentNode,s,a[1],a[2],a[3]);ms.dataset.x=String(p.x);ms.dataset.y=String(p.y);
var m=marker(ti.parentNode,t,a[1],a[2]+" "+(ok?"yes":"no"),a[3]);
m.dataset.x=String(p.tx);m.dataset.y=String(p.ty);m.dataset.m=p.m===null?"":String(p.m);
var ln=document.createElementNS("http://www.w3.org/2000/svg","line");
ln.setAttribute("x1",s.X);ln.setAttribute("y1",s.Y);ln.setAttribute("x2",t.X);ln.setAttribute("y2",t.Y);
ln.setAttribute("stroke",a[2]==="live"?"#fff":a[1]);ln.setAttribute("stroke-width","1.5");
if(!ok)ln.setAttribute("stroke-dasharray","4 3");svg.appendChild(ln);});}
si.addEventListener("mousemove",function(e){var q=pixel(e);live=match(q[0],q[1]);
out.textContent=fmt(live);draw();});
si.addEventListener("mouseleave",function(){live=null;draw();});
si.addEventListener("click",function(e){var q=pixel(e);var p=match(q[0],q[1]);pins.push(p);
out.textContent="pin "+pins.length+": "+fmt(p);draw();});
v.querySelector(".vclear").addEventListener("click",function(){pins=[];live=null;draw();});
window.addEventListener("resize",draw);}
document.querySelectorAll(".viewer").forEach(setup);})();"""
