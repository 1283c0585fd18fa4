"""The course website: every lecture executed in the quick profile, published with its outputs.

``cnn-course site`` (``make site``) executes ``lectures/NN_*.ipynb`` in the quick profile
(the result cache makes a rebuild fast), writes MyST pages around them — a landing page with the
course map and the two commands, the exercises, the instructor guide, and a "paper vs. this run"
page collecting every lecture's scored rows (``cnnlib.report.scored`` → ``$CNNLIB_SCOREBOARD``)
— and builds static HTML with Sphinx + myst-nb into ``site/``. The stored notebooks are never
written: the executed copies live in the build folder.

Everything is local, so the site works without a network: the Furo theme ships its assets, math is
typeset by MathJax 2 from Debian's ``libjs-mathjax`` copied into the site (``make site``
installs it), a progress bar is shown as its final line, and any other widget — it needs a
kernel — is replaced by a note saying so.
"""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

from . import exercises as ex
from . import run

DEBIAN_MATHJAX = Path("/usr/share/javascript/mathjax")  # libjs-mathjax: MathJax 2.7
MATHJAX_SKIP = ("unpacked", "test", "SVG", "otf", "svg", "eot", "png", "*-full.js")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = "*(An interactive widget: it needs a running kernel. Open the notebook in JupyterLab to use it.)*"


class SiteError(RuntimeError):
    """The site cannot be built: a lecture failed (named with its cell), or a tool is missing."""


def mathjax_dir() -> Path:
    """MathJax 2's folder: ``$CNNLIB_MATHJAX`` if set, else Debian's ``libjs-mathjax``."""
    folder = Path(os.environ.get("CNNLIB_MATHJAX") or DEBIAN_MATHJAX)
    if (folder / "MathJax.js").is_file() and (folder / "config" / "TeX-AMS_CHTML.js").is_file():
        return folder
    raise SiteError(f"MathJax 2 is not in {folder}, and the site typesets its math offline with it: "
                    f"on Debian/Ubuntu `sudo apt-get install libjs-mathjax` (make setup does this as root), "
                    f"or `npm install mathjax@2` and set CNNLIB_MATHJAX=node_modules/mathjax")


# ---------------------------------------------------------------------------- executing

def execute_lecture(path: Path, scoreboard: Path, timeout: int = 600) -> nbformat.NotebookNode:
    """``path`` run top to bottom in the quick profile in its own folder; its scored rows are
    appended to ``scoreboard``. A failing cell raises SiteError naming the lecture and the cell."""
    try:
        return run.execute(path, env={"CNNLIB_PROFILE": "quick", "CNNLIB_SCOREBOARD": str(scoreboard)},
                           timeout=timeout)
    except run.LectureError as err:
        raise SiteError(str(err)) from None


def _progress_line(model_id: str, state: dict) -> str | None:
    """The final line of a tqdm notebook bar (an HBox of HTML, a progress bar and HTML), from the
    widget state nbclient saved; None for any other widget."""
    box = state.get(model_id, {})
    if box.get("model_name") != "HBoxModel":
        return None
    kids = [state.get(c.removeprefix("IPY_MODEL_"), {}) for c in box.get("state", {}).get("children", [])]
    if [k.get("model_name") for k in kids] not in (["HTMLModel", "FloatProgressModel", "HTMLModel"],
                                                   ["HTMLModel", "IntProgressModel", "HTMLModel"]):
        return None
    left, bar, right = (k.get("state", {}) for k in kids)
    filled = round(20 * bar.get("value", 0) / bar["max"]) if bar.get("max") else 0
    text = f"{left.get('value', '')}|{'█' * filled}{' ' * (20 - filled)}|{right.get('value', '')}"
    return html.unescape(text).replace("\u2007", " ").strip() + "\n"


def static_outputs(nb) -> nbformat.NotebookNode:
    """Widgets replaced by a static rendering: a progress bar by its final line (from the widget
    state nbclient saved), any other widget by a note that it needs a kernel. No widget state
    and no widget script are left in the notebook."""
    widgets = nb.metadata.pop("widgets", {})
    state = widgets.get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        outputs = []
        for out in cell.get("outputs", []):
            view = out.get("data", {}).get(WIDGET_VIEW)
            if view is not None:
                line = _progress_line(view.get("model_id", ""), state)
                out = nbformat.v4.new_output("stream", name="stderr", text=line) if line else \
                    nbformat.v4.new_output("display_data", data={"text/markdown": WIDGET_NOTE})
            outputs.append(out)
        cell.outputs = outputs
    return nb


# ---------------------------------------------------------------------------- pages

def _title(nb, fallback: str) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            m = re.search(r"^#\s+(.+)$", cell.source, re.M)
            if m:
                return m.group(1).strip()
    return fallback


def _section(markdown: str, heading: str) -> str:
    """The text under ``## heading`` up to the next ``## `` heading."""
    m = re.search(rf"^## {re.escape(heading)}\s*\n(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    return m.group(1).strip() if m else ""


def _command(readme: str, marker: str, default: str) -> str:
    m = re.search(rf"<!-- {marker} -->\s*```bash\n(.+?)\n```", readme, re.S)
    return m.group(1).strip() if m else default


def course_map(readme: str, built: dict[str, str]) -> str:
    """The README's course map with each notebook linked to its page (plain text when that
    lecture is not in this build)."""
    rows = []
    for line in _section(readme, "Course map").splitlines():
        m = re.match(r"\|\s*(\d\d)\s*\|\s*`lectures/([\w-]+)\.ipynb`\s*\|(.*)$", line)
        if m:
            number, stem, rest = m.groups()
            name = f"[{built[stem]}](lectures/{stem}.ipynb)" if stem in built else stem
            rows.append(f"| {number} | {name} |{rest}")
    return "\n".join(["| # | Lecture | Topic | Live experiment |", "|---|---|---|---|", *rows])


def landing_page(readme: str, built: dict[str, str]) -> str:
    intro = readme.split("\n## ", 1)[0].split("\n", 1)[1].strip()
    lab = _command(readme, "lab-command", "make lab")
    test = _command(readme, "test-command", "make test")
    toc = "\n".join(f"lectures/{stem}" for stem in built)
    return f"""# CNN architectures, live

{intro}

## Run it

Set up and start the course (JupyterLab on the lectures; nothing is downloaded at run time):

```bash
git clone <this repository> && cd cnn-course
{lab}
```

Set up and run every test:

```bash
{test}
```

This site shows each lecture as it ran in the **quick profile** (small data, at most a minute and
a half per lecture on a laptop CPU); the numbers in it are from that run. Run a lecture yourself to see it live, in the
medium or full profile for the papers' effects at scale.

## Course map

{course_map(readme, built)}

```{{toctree}}
:maxdepth: 1
:caption: Lectures
:hidden:

{toc}
```

```{{toctree}}
:maxdepth: 1
:caption: Beyond the lectures
:hidden:

results
exercises
instructors
```
"""


def exercises_page(solutions: Path, downloads: str) -> str:
    lines = ["# Exercises", "",
             "Each lecture has a graded exercise: a notebook whose answer cells you fill in. The "
             "visible tests below each answer tell you when you are on the right track; the "
             "instructor's grader adds hidden ones (see the instructor guide).", ""]
    for path in ex.solution_paths(solutions):
        nb = nbformat.read(path, as_version=4)
        tasks, prompt = [], ""
        for cell in nb.cells:
            if cell.cell_type == "markdown":
                prompt = cell.source
            elif ex.is_answer(cell):
                ask = next((ln.strip("# *").strip() for ln in prompt.splitlines() if ln.strip()), "")
                ask = re.sub(r"^Task \d+\s*\([^)]*\)\s*[—:-]\s*", "", ask)  # the points have a column
                tasks.append([ex.grade_id(cell), ask, 0])
            elif ex.is_test(cell) and tasks:
                tasks[-1][2] += ex.nbgrader(cell).get("points", 0)
        total = sum(t[2] for t in tasks)
        lines += [f"## {_title(nb, path.stem)}", "",
                  f"{{download}}`Download the exercise notebook <{downloads}/{path.name}>` "
                  f"— {len(tasks)} tasks, {total:g} points.", "",
                  "| task | what it asks | points |", "|---|---|---|"]
        lines += [f"| `{gid}` | {ask.replace('|', '/')} | {points:g} |" for gid, ask, points in tasks]
        lines.append("")
    return "\n".join(lines)


def instructors_page(readme: str) -> str:
    return "# Instructor guide\n\n" + _section(readme, "For instructors").replace("\n### ", "\n## ") + "\n"


def results_page(rows: dict[str, list[dict]], titles: dict[str, str]) -> str:
    """Every scored "paper vs. this run" row, lecture by lecture, with the profile it ran in."""
    lines = ["# Paper vs. this run", "",
             "Every lecture ends with a table that puts the paper's number beside the number the "
             "lecture just measured, with a verdict: ✓ agrees (beyond two standard errors), within "
             "noise, or ✗ contradicts. These are the tables of this site's build; the last column "
             "says which run profile and data produced them. The quick profile trains on small data "
             "in minutes, so many effects stay within noise there; the medium and full profiles are "
             "sized to show them. The headline claim of each lecture is in bold.", "",
             "| lecture | ✓ agrees | within noise | ✗ contradicts | headline |", "|---|---|---|---|---|"]
    for stem, title in titles.items():
        verdicts = [str(r.get("verdict", "")) for r in rows.get(stem, [])]
        counts = [sum(v.startswith(k) for v in verdicts) for k in ("✓", "within noise", "✗")]
        headline = next((str(r.get("verdict", "")) for r in rows.get(stem, []) if r.get("headline")), "—")
        lines.append(f"| [{stem[:2]}](lectures/{stem}.ipynb) | " + " | ".join(map(str, counts)) + f" | {headline} |")
    lines.append("")
    for stem, title in titles.items():
        mine = rows.get(stem, [])
        lines += [f"## [{title}](lectures/{stem}.ipynb)", ""]
        if not mine:
            lines += ["(this lecture scores no claims)", ""]
            continue
        lines += ["| claim | paper | this run | verdict | profile |", "|---|---|---|---|---|"]
        for r in mine:
            cells = [("**" + r["claim"] + "**") if r.get("headline") else r["claim"],
                     r.get("paper", ""), r.get("measured", ""), r.get("verdict", ""),
                     f"{r.get('profile', '')} ({r.get('data', '')})"]
            lines.append("| " + " | ".join(str(c).replace("|", "/").replace("\n", " ") for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)


CONF = '''# Generated by cnnlib/course/site.py; edit that file instead.
project = "CNN architectures, live"
author = "the course authors"
extensions = ["myst_nb"]
myst_enable_extensions = ["dollarmath", "amsmath"]
nb_execution_mode = "off"          # executed by cnnlib.course.site in the quick profile
nb_ipywidgets_js = {}              # no widget scripts from a CDN
nb_merge_streams = True
html_theme = "furo"
html_title = project
html_static_path = ["_static"]
html_favicon = "_static/favicon.svg"
html_css_files = ["course.css"]
mathjax_path = "mathjax/MathJax.js?config=TeX-AMS_CHTML"
# MathJax 2 (Debian's libjs-mathjax) reads MathJax.Hub.Config, not myst's MathJax 3 options:
# typeset only what myst marked as math, never the code cells or the text around them.
myst_update_mathjax = False
mathjax2_config = {"tex2jax": {"inlineMath": [["\\\\(", "\\\\)"]], "displayMath": [["\\\\[", "\\\\]"]],
                               "processClass": "math|output_area", "ignoreClass": "tex2jax_ignore|mathjax_ignore"},
                   "CommonHTML": {"linebreaks": {"automatic": True}}, "showMathMenu": False,
                   "messageStyle": "none"}
html_show_sourcelink = False
html_show_copyright = False
html_copy_source = False
exclude_patterns = ["_build", "downloads/**", ".*"]
suppress_warnings = ["mystnb.unknown_mime_type", "misc.highlighting_failure"]
'''

# a 3×3 kernel over a feature map: the course's icon, so no browser asks for a missing favicon.ico
FAVICON = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 30 30">'
           '<rect width="30" height="30" rx="4" fill="#2b5b84"/>'
           + "".join(f'<rect x="{3 + 8 * i}" y="{3 + 8 * j}" width="7" height="7" fill="#{"f4c542" if (i + j) % 2 else "ffffff"}"/>'
                     for i in range(3) for j in range(3)) + "</svg>")

# a download link reads as a link (Sphinx sets its text in code type)
CSS = """a.download code { font-family: inherit; font-size: inherit; background: none; border: none; padding: 0; }
a.download code::before { content: "⬇ "; }
"""


# ---------------------------------------------------------------------------- building

def _copy_mathjax(static: Path) -> None:
    shutil.copytree(mathjax_dir(), static / "mathjax", symlinks=False,
                    ignore=shutil.ignore_patterns(*MATHJAX_SKIP))


def build(root: Path, out: Path, lectures: list[Path] | None = None, work: Path | None = None,
          log=print) -> Path:
    """Build the site of the course in ``root`` into ``out``; ``lectures`` (default: all) are
    executed in the quick profile. Returns ``out / "index.html"``."""
    try:
        import myst_nb  # noqa: F401
        import furo  # noqa: F401
    except ImportError as err:
        raise SiteError(f"the site needs Sphinx, myst-nb and furo ({err.name} is missing): "
                        f"pip install -e '.[dev]'") from None
    mathjax_dir()
    if out.exists() and (not out.is_dir() or not (out / ".buildinfo").is_file() and any(out.iterdir())):
        raise SiteError(f"{out} is not empty and not a site built before; choose another --out")
    lectures = sorted(lectures if lectures is not None else (root / "lectures").glob("[0-9][0-9]_*.ipynb"))
    if not lectures:
        raise SiteError(f"no lectures (NN_*.ipynb) in {root / 'lectures'}")
    readme = (root / "README.md").read_text(encoding="utf-8")
    cleanup = work is None
    work = Path(tempfile.mkdtemp(prefix="cnn-course-site-")) if work is None else work
    try:
        src = work / "src"
        shutil.rmtree(src, ignore_errors=True)
        (src / "lectures").mkdir(parents=True)
        (src / "downloads").mkdir()
        titles, rows = {}, {}
        for path in lectures:
            start = time.perf_counter()
            scoreboard = work / f"scoreboard-{path.stem}.jsonl"
            scoreboard.unlink(missing_ok=True)
            nb = static_outputs(execute_lecture(path, scoreboard))
            rows[path.stem] = [json.loads(line) for line in scoreboard.read_text(encoding="utf-8").splitlines()
                               if line.strip()] if scoreboard.exists() else []
            titles[path.stem] = _title(nb, path.stem)
            shutil.copy(path, src / "downloads" / path.name)
            nb.cells.insert(1 if nb.cells and nb.cells[0].cell_type == "markdown" else 0, nbformat.v4.new_markdown_cell(
                f"{{download}}`Download this lecture as a notebook <../downloads/{path.name}>` "
                f"— the page below shows it as it ran in the quick profile."))
            for i, cell in enumerate(nb.cells):
                cell.id = f"site-{i}"
            nbformat.write(nb, src / "lectures" / path.name)
            log(f"executed {path.name} in {time.perf_counter() - start:.0f} s")
        for folder in ("exercises",):
            for p in sorted((root / folder).glob("*.ipynb")):
                shutil.copy(p, src / "downloads" / p.name)
        (src / "index.md").write_text(landing_page(readme, titles), encoding="utf-8")
        (src / "exercises.md").write_text(exercises_page(root / "solutions", "downloads"), encoding="utf-8")
        (src / "instructors.md").write_text(instructors_page(readme), encoding="utf-8")
        (src / "results.md").write_text(results_page(rows, titles), encoding="utf-8")
        (src / "conf.py").write_text(CONF, encoding="utf-8")
        _copy_mathjax(src / "_static")
        (src / "_static" / "favicon.svg").write_text(FAVICON, encoding="utf-8")
        (src / "_static" / "course.css").write_text(CSS, encoding="utf-8")
        start = time.perf_counter()
        html_dir = work / "html"  # myst-nb writes beside its output folder, so build inside work/
        done = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-q", "-E", str(src), str(html_dir)],
                              capture_output=True, text=True)
        if done.returncode:
            raise SiteError(f"sphinx-build failed ({done.returncode}):\n{done.stderr[-3000:]}")
        shutil.rmtree(out, ignore_errors=True)  # an earlier build: no stale pages
        shutil.copytree(html_dir, out)
        log(f"built {out} with Sphinx in {time.perf_counter() - start:.0f} s")
        return out / "index.html"
    finally:
        if cleanup:
            shutil.rmtree(work, ignore_errors=True)
