"""HTML fragments: a graph viewer (:func:`graph_fragment`, :func:`graph_html`) and a report's
findings, tables and graphs (:func:`report_fragment`), each with its own scoped style and script.

The standalone page (:mod:`autograd_lens.render.html`) wraps :func:`report_fragment`; a notebook
shows these fragments as they are (``Graph._repr_mimebundle_``, ``Report._repr_html_``, ``%%lens``).

Graphs and reports are read by their attributes, never imported at run time: this module imports
:mod:`~autograd_lens.errors`, :mod:`~autograd_lens.findings`, :mod:`.dot`, :mod:`.marks` and
:mod:`.tables`, none of which imports :mod:`autograd_lens.graph` or :mod:`autograd_lens.report`,
so both can import this one.
"""

from __future__ import annotations

import html
import itertools
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import LensError
from ..findings import Finding, finding_lines, site_of, site_text
from . import dot as dot_mod
from .marks import finding_marks, findings_about
from .tables import FLOW_TITLE, STEP_TITLE, flow_rows, step_rows

if TYPE_CHECKING:
    from ..graph import Graph
    from ..report import Report
    from .layout import Plan

__all__ = ["graph_fragment", "graph_html", "report_fragment"]

#: Seconds of ``dot`` spent on drawings with a fold or module open, for the whole page.
OPEN_BUDGET_S = 10.0
#: Parts that can be opened, per graph.
MAX_OPENABLE = 8

_tokens = itertools.count(1)


# ----------------------------------------------------------------------------------------------
# Pieces
# ----------------------------------------------------------------------------------------------

_e = html.escape

_LINE_CLASSES = {
    "bold red": "sev-error",
    "bold yellow": "sev-warning",
    "blue": "gutter",
    "bold green": "help",
}


def _finding_html(f: Finding, fid: str, marks: list[str], graph_id: str | None) -> str:
    lines = []
    for style, text in finding_lines(f):
        cls = _LINE_CLASSES.get(style, "")
        lines.append(f'<span class="{cls}">{_e(text)}</span>' if cls else _e(text))
    attrs = f' data-marks="{_e(" ".join(marks))}"' if marks else ""
    if graph_id:
        attrs += f' data-graph="{graph_id}"'
    hint = "" if graph_id else ' title="no graph of this finding was drawn"'
    return (
        f'<pre class="finding {_e(f.severity)}" id="{fid}" tabindex="0" role="button"{attrs}{hint}>'
        + "\n".join(lines)
        + "</pre>"
    )


def _tables_html(report: Report) -> str:
    out = []
    if report.backwards:
        head, rows = flow_rows(report)
        body = "".join(
            "<tr>" + "".join(f'<td class="{_e(state.replace(" ", "-"))}">{_e(text)}</td>' for text, state in row) + "</tr>"
            for row in rows
        )
        out.append(
            f'<table class="flow"><caption>{_e(FLOW_TITLE)}</caption>'
            f"<tr>{''.join(f'<th>{_e(h)}</th>' for h in head)}</tr>{body}</table>"
        )
    if report.steps:
        head, rows2 = step_rows(report)
        body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows2)
        out.append(
            f'<table class="steps"><caption>{_e(STEP_TITLE)}</caption>'
            f"<tr>{''.join(f'<th>{_e(h)}</th>' for h in head)}</tr>{body}</table>"
        )
    return "\n".join(out)


def _svg(graph: Graph, prefix: str, **options: Any) -> tuple[str, Plan]:
    """An inline SVG of ``graph`` (ids prefixed) and its plan; the XML header dropped."""
    data, p = dot_mod.lay_out(graph, "svg", **options, ids="")  # as `render` draws it: laid out once
    svg = data.decode("utf-8")
    start = svg.find("<svg")
    svg = svg[start:] if start >= 0 else svg
    return svg.replace(' id="', f' id="{prefix}'), p


def _mark_ids(graph: Graph, p: Plan, prefix: str, highlights: Iterable[Any]) -> list[str]:
    """Element ids in the drawing of plan ``p`` that show ``highlights``."""
    out: list[str] = []
    item = p.item
    n = len(graph.nodes)
    for h in highlights:
        if h.node is not None and 0 <= h.node < n and item[h.node] is not None:
            out.append(f"{prefix}{item[h.node]}")
        if h.edge is not None:
            a, b = h.edge
            if 0 <= a < n and 0 <= b < n and item[a] is not None and item[b] is not None:
                if item[a] == item[b]:
                    out.append(f"{prefix}{item[a]}")
                else:
                    out.append(f"{prefix}e-{item[a]}-{item[b]}")
    return list(dict.fromkeys(out))


def graph_fragment(graph: Graph, gid: str, *, heading: str = "", budget: list[float] | None = None,
                   warn: Callable[[str], None] | None = None) -> tuple[str, Plan | None]:
    """A graph viewer: toolbar, the drawing, and the drawings with a part open (in templates)."""
    head = f"<h3>{_e(heading)}</h3>" if heading else ""
    title = f'<p class="gtitle">{_e(graph.title)}</p>' if graph.title else ""
    try:
        svg, p = _svg(graph, f"{gid}-")
    except LensError as exc:
        if warn is not None:
            warn(str(exc))
        return (
            f'<section class="graph" id="{gid}">{head}{title}<p class="nograph">{_e(str(exc))}</p>'
            f"<pre class=\"tree\">{_e(str(graph))}</pre></section>",
            None,
        )
    templates = []
    parts = [(f.ident, f.label) for f in p.folds.values()] + [(b.ident, b.module) for b in p.boxes.values()]
    budget = budget if budget is not None else [OPEN_BUDGET_S]
    for k, (ident, label) in enumerate(parts[:MAX_OPENABLE]):
        if budget[0] <= 0:
            break
        t0 = time.perf_counter()
        try:
            vsvg, vp = _svg(graph, f"{gid}v{k}-", open=(ident,))
        except LensError:
            continue
        finally:
            budget[0] -= time.perf_counter() - t0
        templates.append(
            f'<template data-open="{_e(ident)}" data-label="{_e(label)}">{vsvg}</template>'
        )
    toolbar = (
        '<div class="toolbar"><button data-act="in" title="zoom in">+</button>'
        '<button data-act="out" title="zoom out">−</button><button data-act="fit">fit</button>'
        '<button data-act="back" hidden>◀ folded drawing</button><span class="hint">drag to pan · wheel to zoom'
        + (" · click a folded block or a module box to open it" if templates else "")
        + "</span></div>"
    )
    return (
        f'<section class="graph" id="{gid}">{head}{title}{toolbar}<div class="view">{svg}</div>'
        + "".join(templates)
        + "</section>",
        p,
    )


# ----------------------------------------------------------------------------------------------
# Style and script
# ----------------------------------------------------------------------------------------------

CSS = """
.lens-report{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:#0f172a;max-width:1400px;margin:0 auto;padding:8px 16px}
.lens-report h1{font-size:20px;margin:8px 0}.lens-report h2{font-size:16px;margin:18px 0 6px;border-bottom:1px solid #e2e8f0}
.lens-report h3{font-size:14px;margin:6px 0}.lens-report .summary{color:#475569}
.lens-report pre.finding{background:#f8fafc;border:1px solid #e2e8f0;border-left:4px solid #ca8a04;padding:8px 10px;white-space:pre-wrap;cursor:pointer;font:12.5px/1.4 ui-monospace,Menlo,Consolas,monospace;margin:8px 0}
.lens-report pre.finding.error{border-left-color:#dc2626}.lens-report pre.finding.selected{outline:3px solid #2563eb;background:#eff6ff}
.lens-report .sev-error{color:#dc2626;font-weight:bold}.lens-report .sev-warning{color:#a16207;font-weight:bold}
.lens-report .gutter{color:#2563eb}.lens-report .help{color:#15803d;font-weight:bold}
.lens-report table{border-collapse:collapse;margin:8px 0;font-size:13px}.lens-report caption{text-align:left;font-weight:bold;padding:4px 0}
.lens-report th,.lens-report td{border:1px solid #e2e8f0;padding:3px 8px;text-align:left}.lens-report th{background:#f1f5f9}
.lens-report td.reached{color:#15803d}.lens-report td.detached{color:#0e7490}.lens-report td.not-reached{color:#94a3b8}
.lens-report section.graph{border:1px solid #e2e8f0;border-radius:6px;margin:12px 0;padding:6px 8px}
.lens-report .gtitle{margin:2px 0 6px;color:#334155}.lens-report .toolbar{display:flex;gap:6px;align-items:center;margin-bottom:4px}
.lens-report .toolbar button{font:inherit;padding:1px 9px;border:1px solid #cbd5e1;background:#fff;border-radius:4px;cursor:pointer}
.lens-report .toolbar .hint{color:#64748b;font-size:12px}
.lens-report .view{height:70vh;overflow:hidden;resize:vertical;border:1px solid #f1f5f9;cursor:grab;touch-action:none}
.lens-report .view svg{width:100%;height:100%}
.lens-report .lens-fold,.lens-report .lens-box{cursor:zoom-in}
.lens-report .lens-hl polygon,.lens-report .lens-hl path,.lens-report .lens-hl ellipse{stroke:#2563eb!important;stroke-width:5px!important}
.lens-report .lens-hl text{fill:#1d4ed8!important;font-weight:bold}
.lens-report .nograph{color:#b91c1c}
"""

JS = r"""
(function(root){
  if(!root||root.dataset.ready)return;root.dataset.ready="1";
  function q(sel,el){return (el||root).querySelector(sel)}
  function qa(sel,el){return Array.prototype.slice.call((el||root).querySelectorAll(sel))}
  function Viewer(sec){
    this.sec=sec;this.view=q('.view',sec);this.base=this.view.innerHTML;this.attach();
    var self=this;
    qa('.toolbar button',sec).forEach(function(b){b.addEventListener('click',function(){self.act(b.dataset.act)})});
    this.view.addEventListener('wheel',function(ev){ev.preventDefault();var r=self.svg.getBoundingClientRect();
      self.zoom(ev.deltaY<0?0.8:1.25,(ev.clientX-r.left)/r.width,(ev.clientY-r.top)/r.height)},{passive:false});
    var drag=null;
    this.view.addEventListener('pointerdown',function(ev){drag={x:ev.clientX,y:ev.clientY,vb:self.vb.slice(),moved:false}});
    window.addEventListener('pointermove',function(ev){if(!drag)return;var r=self.svg.getBoundingClientRect();
      var dx=(ev.clientX-drag.x)/r.width*self.vb[2],dy=(ev.clientY-drag.y)/r.height*self.vb[3];
      if(Math.abs(ev.clientX-drag.x)+Math.abs(ev.clientY-drag.y)>3)drag.moved=true;
      self.vb[0]=drag.vb[0]-dx;self.vb[1]=drag.vb[1]-dy;self.apply()});
    window.addEventListener('pointerup',function(){setTimeout(function(){drag=null},0)});
    this.view.addEventListener('click',function(ev){if(drag&&drag.moved)return;
      var part=ev.target.closest('.lens-fold,.lens-box');if(!part)return;
      var t=qa('template',sec).filter(function(t){return t.dataset.open===self.identOf(part)})[0];
      if(t)self.open(t)});
  }
  Viewer.prototype.identOf=function(el){var t=el.querySelector('title');var a=el.querySelector('a');
    var tip=(a&&(a.getAttribute('xlink:title')||a.getAttribute('title')))||'';
    if(el.classList.contains('lens-box')){var m=tip.split(' (collapsed')[0];return 'module:'+m}
    return tip};
  Viewer.prototype.attach=function(){this.svg=q('svg',this.view);
    var hpt=parseFloat(this.svg.getAttribute('height')||'0'),wpt=parseFloat(this.svg.getAttribute('width')||'0');
    if(hpt&&wpt){var w=this.view.clientWidth||800,h=Math.min(hpt*4/3,w*hpt/wpt);
      this.view.style.height=Math.max(160,Math.min(h+8,0.7*window.innerHeight))+'px'}
    this.svg.removeAttribute('width');this.svg.removeAttribute('height');
    var vb=this.svg.getAttribute('viewBox').split(/[ ,]+/).map(Number);this.full=vb.slice();this.vb=vb.slice();this.apply()};
  Viewer.prototype.apply=function(){this.svg.setAttribute('viewBox',this.vb.join(' '))};
  Viewer.prototype.zoom=function(f,fx,fy){if(fx===undefined){fx=.5;fy=.5}var w=this.vb[2]*f,h=this.vb[3]*f;
    this.vb[0]+=(this.vb[2]-w)*fx;this.vb[1]+=(this.vb[3]-h)*fy;this.vb[2]=w;this.vb[3]=h;this.apply()};
  Viewer.prototype.act=function(a){if(a==='in')this.zoom(0.8);else if(a==='out')this.zoom(1.25);
    else if(a==='fit'){this.vb=this.full.slice();this.apply()}else if(a==='back')this.close()};
  Viewer.prototype.open=function(t){this.view.innerHTML=t.innerHTML;this.attach();q('[data-act=back]',this.sec).hidden=false};
  Viewer.prototype.close=function(){this.view.innerHTML=this.base;this.attach();q('[data-act=back]',this.sec).hidden=true};
  Viewer.prototype.centre=function(el){var b=el.getBBox();var m=el.getCTM(),s=this.svg.getCTM();
    var full=this.full,w=Math.max(b.width*4,Math.min(full[2],800)),h=w*full[3]/full[2];
    var p=this.svg.createSVGPoint();p.x=b.x+b.width/2;p.y=b.y+b.height/2;
    if(m&&s){p=p.matrixTransform(s.inverse().multiply(m))}
    this.vb=[p.x-w/2,p.y-h/2,w,h];this.apply()};
  var viewers={};qa('section.graph').forEach(function(sec){if(q('.view svg',sec))viewers[sec.id]=new Viewer(sec)});
  function select(f){qa('pre.finding.selected').forEach(function(x){x.classList.remove('selected')});
    qa('.lens-hl').forEach(function(x){x.classList.remove('lens-hl')});f.classList.add('selected');
    var v=viewers[f.dataset.graph];if(!v)return;if(v.view.innerHTML!==v.base)v.close();
    var first=null;(f.dataset.marks||'').split(' ').forEach(function(id){if(!id)return;
      var el=v.view.querySelector('[id="'+id+'"]');if(el){el.classList.add('lens-hl');first=first||el}});
    v.sec.scrollIntoView({block:'start'});if(first)v.centre(first)}
  qa('pre.finding').forEach(function(f){f.addEventListener('click',function(){select(f)});
    f.addEventListener('keydown',function(ev){if(ev.key==='Enter'||ev.key===' '){ev.preventDefault();select(f)}})});
})(document.currentScript?document.currentScript.parentNode:null);
"""


# ----------------------------------------------------------------------------------------------
# Fragments
# ----------------------------------------------------------------------------------------------


def report_fragment(
    report: Report,
    graphs: Sequence[tuple[Mapping[str, Any], Graph]],
    *,
    warn: Callable[[str], None] | None = None,
) -> str:
    """The report as an HTML fragment (a ``<div class="lens-report">`` with its own style and
    script): findings, tables, graphs. Used by the page and by notebooks."""
    token = f"r{next(_tokens)}"
    budget = [OPEN_BUDGET_S]
    sections: list[str] = []
    failures: list[str] = []
    drawn: list[tuple[Mapping[str, Any], Graph, str, Plan | None]] = []
    for i, (entry, graph) in enumerate(graphs):
        gid = f"{token}g{i}"
        site = site_of(entry.get("site"))
        heading = site_text(site.file, site.line) if site and site.file else str(entry.get("key") or f"graph {i + 1}")
        frag, p = graph_fragment(graph, gid, heading=heading, budget=budget, warn=failures.append)
        sections.append(frag)
        drawn.append((entry, graph, gid, p))
    if failures and warn is not None:  # one line, however many graphs
        n = len(failures)
        warn(f"{n} graph{'s' if n != 1 else ''} shown as text in the HTML report: {failures[0]}")
    items = []
    for j, f in enumerate(report.findings):
        gid = None
        marks: list[str] = []
        for entry, graph, g_id, p in drawn:
            key = entry.get("key")
            if findings_about(graph, [f], key=key if isinstance(key, str) else None, site=site_of(entry.get("site"))):
                gid = g_id
                if p is not None:
                    marks = _mark_ids(graph, p, f"{g_id}-", finding_marks(graph, f))
                break
        items.append(_finding_html(f, f"{token}f{j}", marks, gid))
    n_err, n_warn = len(report.errors), len(report.warnings)
    summary = (
        f"{n_err} error{'s' if n_err != 1 else ''}, {n_warn} warning{'s' if n_warn != 1 else ''}; "
        f"{len(report.backwards)} backward site{'s' if len(report.backwards) != 1 else ''}, "
        f"{len(report.steps)} step site{'s' if len(report.steps) != 1 else ''}"
    )
    if report.status != "ok":
        summary += f"; the script ended with an error: {report.error or report.status}"
    findings_html = "\n".join(items) if items else '<p class="clean">No findings.</p>'
    hint = "<p class=\"summary\">Select a finding to see it in its graph.</p>" if any(d[3] for d in drawn) and items else ""
    return (
        f'<div class="lens-report" id="{token}"><style>{CSS}</style>'
        f'<p class="summary">{_e(summary)}</p>'
        f"<h2>Findings</h2>{hint}{findings_html}"
        + (f"<h2>Backward calls and steps</h2>{_tables_html(report)}" if report.backwards or report.steps else "")
        + (f"<h2>Graphs</h2>{''.join(sections)}" if sections else "")
        + f"<script>{JS}</script></div>"
    )


def graph_html(graph: Graph) -> str:
    """One graph as an HTML fragment with its own style and script (how a notebook shows it)."""
    token = f"r{next(_tokens)}"
    frag, _ = graph_fragment(graph, f"{token}g0")
    return f'<div class="lens-report" id="{token}"><style>{CSS}</style>{frag}<script>{JS}</script></div>'
