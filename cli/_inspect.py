"""``sensitivity inspect`` and the audit table of ``sensitivity check``: summaries as text.

The summary itself (what a result holds, as plain data) is :func:`systems.summary.summarize`;
this module only renders it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping


from ._report import format_value, format_vectors, stats_block

__all__ = ["render_summary", "render_audit"]


def _render_elasticity(e: Mapping) -> list[str]:
    lines = ["Elasticity (" + ("converged" if e.get("converged") else "NOT CONVERGED") + "):"]
    lines.append(f"  pressure p = {format_value(e.get('pressure'))}, bulk modulus B = "
                 f"{format_value(e.get('bulk_modulus'))}, shear modulus G = "
                 f"{format_value(e.get('shear_modulus'))}")
    if e.get("stress") is not None:
        rows = ", ".join("[" + " ".join(f"{v:.6g}" for v in row) + "]" for row in e["stress"])
        lines.append(f"  stress: [{rows}]")
    if e.get("voigt") is not None:
        labels = e["voigt_components"]
        lines.append("  elastic tensor (Voigt): " + "  ".join(f"{c:>12}" for c in labels))
        for label, row in zip(labels, e["voigt"]):
            lines.append(f"  {label:>22}: " + "  ".join(f"{v:>12.6g}" for v in row))
    for key in ("bulk_modulus_definition", "shear_modulus_definition"):
        if e.get(key):
            lines.append(f"  {key.replace('_definition', '').replace('_', ' ')}: {e[key]}")
    lines.append(f"  solves: {format_value(e.get('n_solves'))}, iterations (max) "
                 f"{format_value(e.get('iterations'))}, relative residual "
                 f"{format_value(e.get('relative_residual'))}")
    return lines


def _kv(mapping: Mapping, indent: str = "  ") -> list[str]:
    if not mapping:
        return [f"{indent}-"]
    width = max(len(str(k)) for k in mapping)
    return [f"{indent}{str(k):<{width}} = {format_value(v)}" for k, v in mapping.items()]


def render_summary(summary: Mapping) -> str:
    """The text ``sensitivity inspect`` prints."""
    s = summary["system"]
    lines = [f"Result {summary['file']}"]
    if s["box"] is None:
        box = "free boundaries"
    elif isinstance(s["box"][0], list):  # a sheared cell: its cell vectors (the columns)
        box = "periodic sheared cell, vectors " + format_vectors(zip(*s["box"]))
    else:
        box = ("periodic box " if s["periodic"] else "box ") + " x ".join(
            f"{b:.6g}" for b in s["box"])
    species = ", ".join(f"{c} of species {k}" for k, c in s["species"].items())
    phi = s.get("packing_fraction")
    lines.append(
        f"System: {s['n']} particles in {s['dim']}D ({species}), {box}"
        + (f", phi {phi:.4f}" if isinstance(phi, (int, float)) else "")
    )
    if s.get("input"):
        lines.append(f"Input: {s['input']}")
    potential = summary.get("potential") or {}
    if potential:
        shown = ", ".join(f"{k} {format_value(v)}" for k, v in potential.items() if v is not None)
        lines.append(f"Potential: {shown}")
    responses = {
        t["name"]: {
            "solver": t["solver"],
            "iterations": t["iterations"],
            "residual": t["residual"],
            "converged": t["converged"],
        }
        for t in summary["thetas"]
    }
    lines.append("")
    lines.append(
        stats_block(
            summary["relaxation"],
            responses,
            summary.get("timings"),
            rattlers=summary["rattlers"]["count"],
            n=s["n"],
        )
    )
    lines.append("")
    lines.append("Thetas:")
    for t in summary["thetas"]:
        theta = t["theta"]
        theta_text = format_value(theta) if not isinstance(theta, list) else f"[{len(theta)} values]"
        theta_unit = t.get("theta_unit")
        if theta_unit and theta_unit not in ("1", "unknown"):
            theta_text += f" {theta_unit}"
        unit = f" [{t['unit']}]" if t.get("unit") not in (None, "unknown") else ""
        lines.append(
            f"  {t['name']}: kind {t['kind'] or '?'}, theta = {theta_text}, dx/dtheta "
            f"{'x'.join(str(d) for d in t['shape'])}{unit}, max |dx_i/dtheta| "
            f"{format_value(t['max_response'])}, rms {format_value(t['rms_response'])}"
        )
        described = t.get("dataset_attrs") or {}
        for key in ("theta_definition", "axes_text", "unit_text"):
            if described.get(key):
                lines.append(f"    {key.replace('_text', '').replace('_', ' ')}: {described[key]}")
        attrs = t.get("attrs") or {}
        if isinstance(attrs.get("linear_range_plus"), (int, float)):
            sides = []
            for side, sign in (("plus", "+"), ("minus", "-")):
                pair = attrs.get(f"linear_range_{side}_pair") or [-1, -1]
                event = attrs.get(f"linear_range_{side}_event")
                where = f" (pair {pair[0]}-{pair[1]} {event})" if event not in (None, "none") else ""
                sides.append(f"dtheta{sign} = {format_value(attrs[f'linear_range_{side}'])}{where}")
            lines.append(f"    linear range: {', '.join(sides)}")
        skipped = (t.get("attrs") or {}).get("skipped")
        if skipped:
            lines.append(f"    not computed: {skipped}")
        if t["largest"]:
            largest = ", ".join(
                f"#{p['particle']} (species {p['species']}) {p['magnitude']:.3e}" for p in t["largest"]
            )
            lines.append(f"    largest: {largest}")
    described = next(
        (t["dataset_attrs"] for t in summary["thetas"] if t.get("dataset_attrs")), {})
    for key in ("gauge", "rattlers", "units"):
        if isinstance(described.get(key), str):
            lines.append(f"  {key}: {described[key]}")
    rattlers = summary["rattlers"]
    if rattlers["count"]:
        shown = ", ".join(str(i) for i in rattlers["indices"][:20])
        more = " ..." if rattlers["count"] > 20 else ""
        lines.append(f"Rattlers ({rattlers['count']}): {shown}{more}")
    else:
        lines.append("Rattlers: none")
    if summary.get("zero_modes"):
        lines.append("Zero modes and conditioning:")
        lines += _kv(summary["zero_modes"])
    if summary.get("elasticity"):
        lines += _render_elasticity(summary["elasticity"])
    if summary.get("audit"):
        text, _ = render_audit(summary["audit"])
        lines.append(text)
    provenance = summary.get("provenance") or {}
    if provenance:
        keys = [k for k in provenance if not isinstance(provenance[k], Mapping)][:12]
        lines.append("Provenance:")
        lines += _kv({k: provenance[k] for k in keys})
    lines.append(f"Converged: {format_value(summary['converged'])}")
    return "\n".join(lines)


_ERROR_KEYS = ("rel_error", "relative_error", "max_rel_error", "error", "max_abs_error", "abs_error")


def _entry_ok(entry: Mapping, tolerance: float | None) -> bool | None:
    if tolerance is not None:
        for key in _ERROR_KEYS[:4]:
            value = entry.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return bool(math.isfinite(value) and value <= tolerance)
    for key in ("passed", "ok", "agree", "agrees"):
        if key in entry and entry[key] is not None:
            return bool(entry[key])
    return None


def render_audit(audit: Mapping, *, tolerance: float | None = None) -> tuple[str, bool]:
    """The finite-difference audit as a table, and whether it passed.

    ``audit`` is ``audit_task``'s dict: one mapping per θ (``relative_error``,
    ``max_abs_error``, ``norm_implicit``, ``fd_step``, ``relax_steps``, ``contacts_changed``,
    ``passed``, ``note``) and overall scalars (``max_relative_error``, ``passed``, ``reason``).
    With ``tolerance``, a θ passes when its relative error is at most ``tolerance``;
    otherwise the audit's own verdict is used.
    """
    entries = {k: v for k, v in audit.items() if isinstance(v, Mapping)}
    overall = {k: v for k, v in audit.items() if not isinstance(v, Mapping)}
    first = next(iter(entries.values()), {})
    limit = tolerance if tolerance is not None else first.get("tolerance")
    title = "Finite-difference audit (central differences, re-minimized from x*"
    if overall.get("ftol") is not None:
        title += f" to ftol {format_value(overall['ftol'])}"
    title += ")" + (f", tolerance {format_value(limit)}:" if limit is not None else ":")
    lines = [title]
    columns = [("relative_error", "rel. error"), ("max_abs_error", "abs. error"),
               ("norm_implicit", "|dx/dtheta|"), ("fd_step", "h"), ("relax_steps", "steps"),
               ("contacts_changed", "contacts±")]
    if entries:
        width = max(5, *(len(name) for name in entries))
        lines.append(f"  {'theta':<{width}}  " + "  ".join(f"{label:>10}" for _, label in columns)
                     + "  verdict")
    verdicts = []
    notes = []
    for name, entry in entries.items():
        ok = _entry_ok(entry, tolerance)
        verdicts.append(ok)
        cells = "  ".join(f"{format_value(entry.get(key)):>10}" for key, _ in columns)
        lines.append(f"  {name:<{width}}  {cells}  {({True: 'PASS', False: 'FAIL', None: '?'}[ok])}")
        if entry.get("note"):
            notes.append(f"  note ({name}): {entry['note']}")
        if entry.get("relax_converged") is False:
            notes.append(f"  note ({name}): a re-minimization at theta +/- h did not converge")
    lines += notes
    if overall.get("reason"):
        lines.append(f"  reason: {overall['reason']}")
    known = [v for v in verdicts if v is not None]
    if tolerance is not None and known:
        ok_overall = all(known) and overall.get("reason") is None
    else:
        own = _entry_ok(overall, None)
        ok_overall = own if own is not None else (all(known) if known else False)
    extra = []
    if isinstance(overall.get("max_relative_error"), (int, float)):
        extra.append(f"max relative error {format_value(overall['max_relative_error'])}")
    if isinstance(overall.get("time_s"), (int, float)):
        extra.append(f"{overall['time_s']:.2f} s")
    lines.append(f"  verdict: {'PASS' if ok_overall else 'FAIL'}" + (f" ({', '.join(extra)})" if extra else ""))
    return "\n".join(lines), bool(ok_overall)
