"""The result box: the numbers of a registration report (the `result` event, report.json) as rows.
Plain Python, no Slicer."""
from __future__ import annotations

import html


def _number(value, digits: int) -> str:
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return "?"


def reportSummary(report: dict) -> list[tuple[str, str]]:
    """[(label, value)]: runtime, folding %, inverse-consistency error, TRE when landmarks were given."""
    rows: list[tuple[str, str]] = []
    seconds = (report.get("seconds") or {}).get("total")
    if seconds is not None:
        where = f" on {report['device']}" if report.get("device") else ""
        rows.append(("Runtime", f"{_number(seconds, 1)} s{where}"))
    if "folding_fraction" in report:
        text = f"{_number(100 * float(report['folding_fraction']), 4)} % of voxels"
        if "folding_fraction_lungs" in report:
            text += f" ({_number(100 * float(report['folding_fraction_lungs']), 4)} % in the lungs)"
        rows.append(("Folding (J \u2264 0)", text))
    if "jacobian_min" in report and "jacobian_max" in report:
        rows.append(("Jacobian range", f"{_number(report['jacobian_min'], 3)} to {_number(report['jacobian_max'], 3)}"))
    ice = report.get("inverse_consistency_error_mm")
    if isinstance(ice, dict):
        rows.append(("Inverse consistency", f"{_number(ice.get('mean'), 3)} mm mean, {_number(ice.get('p99'), 3)} mm p99"))
    before, after = report.get("tre_before_mm"), report.get("tre_after_mm")
    if isinstance(after, dict):
        text = f"{_number(after.get('mean'), 2)} mm mean, {_number(after.get('p50'), 2)} mm median"
        if isinstance(before, dict):
            text = f"{_number(before.get('mean'), 2)} mm \u2192 " + text
        rows.append(("TRE", f"{text} ({after.get('count', '?')} landmarks)"))
    model = report.get("model")
    if isinstance(model, dict) and model.get("id"):
        rows.append(("Model", str(model["id"])))
    refinement = report.get("refinement")
    if isinstance(refinement, dict):
        start = {"network": ", from the network's prediction", "identity": ", from the identity"}.get(refinement.get("start"), "")
        rows.append(("Refinement", f"{refinement.get('method', '?')}, {refinement.get('iterations', '?')} iterations{start}"))
    return rows


def reportHtml(report: dict) -> str:
    rows = reportSummary(report)
    if not rows:
        return ""
    cells = "".join(f"<tr><td><b>{html.escape(label)}</b>&nbsp;&nbsp;</td><td>{html.escape(value)}</td></tr>"
                    for label, value in rows)
    return f"<table>{cells}</table>"
