"""Moves the nodes of the example workflows apart so that no two overlap in any renderer.

    python tests/relayout_examples.py [REPORT_DIR]

Reads the node boxes the browser probes measured (tests/test_browser.py writes them to
tests/artifacts/browser/frontend-*/report-*.json: classic canvas and Vue renderer, each frontend), takes for every
node the largest box any renderer drew, and lays each workflow out again keeping its columns and their order: a
column starts right of everything placed before it, and a node starts below the node above it in its column.
Groups are fitted around their nodes. Node sizes and everything but `pos` and group bounds stay as they are.
The migrated examples are left alone: nodes/migrate.py lays them out (tests/make_migrated_examples.py).
Run it after a node grows, then the browser test and tests/test_workflows.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PACK = Path(__file__).resolve().parent.parent
GAP = 40  # between boxes, in graph units
COLUMN = 60  # nodes whose x differ by less than this share a column
VUE_MIN_WIDTH = 430  # the Vue renderer of frontend 1.27 draws most nodes this wide, whatever their size
GROUP_PAD, GROUP_TITLE = 20, 50


def measured_extents(report_dir: Path) -> dict:
    """(workflow, node id) -> (left, top, right, bottom) of the largest box drawn, relative to the node's pos."""
    extents = {}
    for path in sorted(report_dir.glob("frontend-*/report-*.json")):
        report = json.loads(path.read_text())
        for name, result in report["workflows"].items():
            pos = {str(n["id"]): n["pos"] for n in result["saved"]["nodes"]}  # where the probe had the nodes
            for box in result["boxes"]["graph"] + result["boxes"]["dom"]:  # both in graph units
                x, y, w, h = box["box"]
                if w <= 0 or h <= 0 or str(box["id"]) not in pos:
                    continue
                px, py = pos[str(box["id"])][:2]
                key = (name, str(box["id"]))
                old = extents.get(key, (0, 0, 0, 0))
                extents[key] = (min(old[0], x - px), min(old[1], y - py), max(old[2], x - px + w), max(old[3], y - py + h))
    return extents


def _extent(node: dict, measured: tuple | None) -> tuple:
    w, h = node.get("size", [300, 100])[:2]
    left, top, right, bottom = measured or (0, -30, w, h)
    if node["type"] not in ("Note", "MarkdownNote"):
        right = max(right, VUE_MIN_WIDTH)
    return left, top, max(right, w), max(bottom, h)


def relayout(workflow: dict, extents: dict) -> dict:
    nodes = workflow["nodes"]
    ext = {str(n["id"]): _extent(n, extents.get(str(n["id"]))) for n in nodes}
    old_pos = {str(n["id"]): tuple(n["pos"][:2]) for n in nodes}
    members = []
    for group in workflow.get("groups") or []:
        gx, gy, gw, gh = group["bounding"]
        members.append([str(n["id"]) for n in nodes if gx <= n["pos"][0] < gx + gw and gy <= n["pos"][1] < gy + gh])
    columns: list[list[dict]] = []
    for node in sorted(nodes, key=lambda n: (n["pos"][0], n["pos"][1])):
        if columns and node["pos"][0] - columns[-1][0]["pos"][0] < COLUMN:
            columns[-1].append(node)
        else:
            columns.append([node])
    right_edge = None
    for column in columns:
        x = x0 = min(n["pos"][0] for n in column)
        if right_edge is not None:
            x = max(x, right_edge + GAP - min(ext[str(n["id"])][0] for n in column))
        bottom = None
        for node in sorted(column, key=lambda n: n["pos"][1]):
            left, top, right, low = ext[str(node["id"])]
            y = node["pos"][1] if bottom is None else max(node["pos"][1], bottom + GAP - top)
            node["pos"] = [x + node["pos"][0] - x0, y]
            bottom = y + low
        right_edge = max(n["pos"][0] + ext[str(n["id"])][2] for n in column) if right_edge is None else max(
            right_edge, max(n["pos"][0] + ext[str(n["id"])][2] for n in column))
    for group, inside in zip(workflow.get("groups") or [], members):
        if not inside:
            continue
        by_id = {str(n["id"]): n for n in nodes}
        boxes = [(by_id[i]["pos"][0] + ext[i][0], by_id[i]["pos"][1] + ext[i][1],
                  by_id[i]["pos"][0] + ext[i][2], by_id[i]["pos"][1] + ext[i][3]) for i in inside]
        x0, y0 = min(b[0] for b in boxes) - GROUP_PAD, min(b[1] for b in boxes) - GROUP_TITLE
        x1, y1 = max(b[2] for b in boxes) + GROUP_PAD, max(b[3] for b in boxes) + GROUP_PAD
        group["bounding"] = [round(x0), round(y0), round(x1 - x0), round(y1 - y0)]
    moved = sum(old_pos[str(n["id"])] != tuple(n["pos"][:2]) for n in nodes)
    return {"moved": moved}


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    report_dir = Path(args[0]) if args else PACK / "tests" / "artifacts" / "browser"
    extents = measured_extents(report_dir)
    if not extents:
        print(f"no probe reports under {report_dir}: run tests/test_browser.py first", file=sys.stderr)
        return 1
    for path in sorted((PACK / "workflows").glob("*.json")):
        if path.stem.startswith("likeness_migrated_"):
            continue
        text = path.read_text()
        workflow = json.loads(text)
        indent = len(text.split("\n")[1]) - len(text.split("\n")[1].lstrip())  # keep the file's own style
        mine = {i: e for (name, i), e in extents.items() if name == path.stem}
        result = relayout(workflow, mine)
        if result["moved"]:
            path.write_text(json.dumps(workflow, indent=indent, ensure_ascii=text.isascii()) + "\n")
            print(f"{path.name}: moved {result['moved']} node(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
