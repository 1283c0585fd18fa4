"""The course website (``make site``), built for two lectures and read in headless Chromium: it
loads without console errors and without a request leaving the machine, its figures are real
images, its display math is typeset, and the course map's links resolve. A lecture that fails
stops the build with the lecture and the cell named; the stored notebooks stay clean.

Screenshots of the landing page and a lecture page go to ``artifacts/site/``.
"""
import functools
import hashlib
import http.server
import threading
from pathlib import Path

import nbformat
import psutil
import pytest

from cnnlib.course import site
from test_browser import browser  # noqa: F401  (the Chromium fixture)

ROOT = Path(__file__).resolve().parents[1]
LECTURES = ["08_resnet_ensembles", "09_loss_landscape"]  # the fastest two with figures and equations
SHOTS = ROOT / "artifacts" / "site"

def _hashes(folder):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.ipynb"))}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("site-parent") / "site"
    before = _hashes(ROOT / "lectures")
    with pytest.MonkeyPatch.context() as mp:  # its own result cache: the notebook tests' cold times stay cold
        mp.setenv("CNNLIB_CACHE", str(tmp_path_factory.mktemp("site-cache")))
        index = site.build(ROOT, out, [ROOT / "lectures" / f"{name}.ipynb" for name in LECTURES],
                           work=tmp_path_factory.mktemp("site-work"))
    assert _hashes(ROOT / "lectures") == before, "building the site changed a stored notebook"
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name], "the build wrote beside its folder"
    return index.parent


@pytest.fixture(scope="module")
def server(built):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(built))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture()
def page(browser, server):  # noqa: F811
    """A page that records console errors, failed loads and every request not to the server."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    p = context.new_page()
    p.problems = []
    p.on("console", lambda m: m.type == "error" and p.problems.append(f"console: {m.text}"))
    p.on("pageerror", lambda e: p.problems.append(f"page error: {e}"))
    p.on("requestfailed", lambda r: p.problems.append(f"failed: {r.url}"))

    def outside(route):
        p.problems.append(f"left the machine: {route.request.url}")
        route.abort()

    p.route(lambda url: not url.startswith(server) and not url.startswith("data:"), outside)
    yield p
    context.close()


def _open(page, url):
    page.goto(url, wait_until="networkidle")
    assert page.problems == [], page.problems


@pytest.mark.browser
@pytest.mark.slow
def test_the_landing_page_has_the_course_map_and_its_links_resolve(page, server):
    _open(page, f"{server}/index.html")
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "landing.png"), full_page=True)
    text = page.inner_text("article[role=main]")
    assert "make lab" in text and "make test" in text
    links = page.eval_on_selector_all("article[role=main] table a", "els => els.map(e => e.href)")
    assert len(links) == len(LECTURES)  # the lectures not in this build are plain text
    for href in links + [f"{server}/results.html", f"{server}/exercises.html", f"{server}/instructors.html"]:
        assert page.request.get(href).status == 200, href
    assert len(page.eval_on_selector_all("article[role=main] table tbody tr", "els => els")) == 10


@pytest.mark.browser
@pytest.mark.slow
def test_a_lecture_page_has_its_figures_typeset_math_and_a_download_link(page, server):
    _open(page, f"{server}/lectures/09_loss_landscape.html")
    page.wait_for_selector(".MJXc-display", timeout=30_000)  # MathJax's CommonHTML display math
    page.screenshot(path=str(SHOTS / "lecture-09.png"), full_page=False)
    assert page.problems == [], page.problems
    sizes = page.eval_on_selector_all("article[role=main] img", "els => els.map(e => [e.naturalWidth, e.naturalHeight])")
    assert len(sizes) >= 3 and all(w > 100 and h > 100 for w, h in sizes), sizes
    assert "$$" not in page.inner_text("article[role=main]")
    download = page.get_attribute("a.download", "href")
    assert download and download.endswith("09_loss_landscape.ipynb")
    assert page.request.get(f"{server}/lectures/{download}").status == 200
    # previous / next
    assert page.get_attribute("a.prev-page", "href") and page.get_attribute("a.next-page", "href")


@pytest.mark.browser
@pytest.mark.slow
def test_the_results_page_collects_each_lectures_scored_rows(page, server):
    _open(page, f"{server}/results.html")
    text = page.inner_text("article[role=main]")
    assert "one block deleted: a ResNet barely suffers" in text  # L08's headline
    assert "quick (digits)" in text or "quick (" in text


@pytest.mark.browser
@pytest.mark.slow
def test_a_widget_is_shown_as_a_note_not_a_script(page, server):
    _open(page, f"{server}/lectures/09_loss_landscape.html")
    assert "needs a running kernel" in page.inner_text("article[role=main]")


def test_a_lecture_that_fails_names_itself_and_its_cell(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Broken"),
                                         nbformat.v4.new_code_cell("x = 1"),
                                         nbformat.v4.new_code_cell("raise ValueError('bad input')")])
    (tmp_path / "lectures").mkdir()
    nbformat.write(nb, tmp_path / "lectures" / "01_broken.ipynb")
    (tmp_path / "README.md").write_text("# x\n\ntext\n")
    with pytest.raises(site.SiteError, match=r"01_broken.ipynb: cell 3 failed: ValueError: bad input"):
        site.build(tmp_path, tmp_path / "out")


def _cmdline(process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:  # a zombie another test left, or a process that just ended
        return ""


def test_a_progress_bar_is_shown_as_its_final_line_and_other_widgets_as_a_note(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "from tqdm.auto import tqdm\nimport ipywidgets\n"
        "for _ in tqdm(range(7), desc='ResNet-8'):\n    pass\n"
        "display(ipywidgets.IntSlider(3))")])
    nbformat.write(nb, tmp_path / "01_bars.ipynb")
    executed = site.execute_lecture(tmp_path / "01_bars.ipynb", tmp_path / "scores.jsonl")
    kernels = [c for c in psutil.Process().children(recursive=True) if "ipykernel" in _cmdline(c)]
    assert kernels == [], "the lecture's kernel outlived its execution"
    assert "widgets" in executed.metadata  # nbclient saved the widgets' final state ...
    outputs = site.static_outputs(executed).cells[0].outputs
    assert "widgets" not in executed.metadata  # ... which the page does not carry
    bar, note = outputs
    assert bar.output_type == "stream"
    assert bar.text.startswith("ResNet-8: 100%|" + "█" * 20 + "| 7/7 ["), bar.text
    assert "needs a running kernel" in note.data["text/markdown"]
    assert all(site.WIDGET_VIEW not in o.get("data", {}) for o in outputs)


def test_the_build_never_writes_over_a_folder_that_is_not_a_site(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(site.SiteError, match="not empty and not a site built before"):
        site.build(ROOT, tmp_path, [ROOT / "lectures" / "08_resnet_ensembles.ipynb"])
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_without_mathjax_the_build_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLIB_MATHJAX", str(tmp_path))
    with pytest.raises(site.SiteError, match=r"apt-get install libjs-mathjax.*npm install mathjax@2"):
        site.build(ROOT, tmp_path / "out", [ROOT / "lectures" / "08_resnet_ensembles.ipynb"])


def test_the_command_line_names_the_lectures_it_knows(capsys):
    from cnnlib.course import cli
    with pytest.raises(SystemExit, match=r"no lecture 42; the lectures are 01, 02, .*, 10"):
        cli.main(["site", "42"])
