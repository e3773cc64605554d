"""What a reviewer sees in MLflow's UI, in a real browser.

The module records a minimize sweep and a matmul sweep into a SQLite store, serves it with
``mlflow server`` on 127.0.0.1, and opens it in headless Chromium: Debian's ``chromium``,
driven by playwright (nothing here downloads a browser). The tests assert on what is
visible, not on the page's source, and read what to expect (run names, params, artifacts)
back from the store with a plain ``MlflowClient``.

Each view is saved as a screenshot; pytest lists them at the end of its output. With
``EXPERIMENTS_UI_SCREENSHOTS=DIR`` they are also copied to DIR (``docs`` makes the README's).
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest
from mlflow import MlflowClient
from mlflow.entities import Run

from experiments import tasks
from tests.conftest import run_cli
from tests.services import MlflowServer

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # the tests then skip, or fail under CI: see missing_browser()
    expect = sync_playwright = None

pytestmark = [pytest.mark.ui, pytest.mark.server, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; .ci/run installs it
# Headless, and nothing of Chromium's own reaching for the network (there may be none:
# its background connections then stall page loads).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# A reviewer's two choices on a first visit, as MLflow 3.17's UI stores them: its "Model
# training" side rather than GenAI (where it opens), and its assistant panel closed (it
# opens by itself and takes a third of the width).
PANEL_CLOSED = """
localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');
localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');
"""
REVIEWER_SETTINGS = (
    PANEL_CLOSED
    + """
localStorage.setItem('mlflow.workflowType_v1', '"machine_learning"');
"""
)
VIEWPORT = {"width": 1400, "height": 900}
WAIT_MS = 30_000  # the first page load compiles MLflow's UI bundle: seconds

SWEEPS = {
    "minimize": ["task=minimize", "optim=adam,sgd", "optim.lr=0.1,0.01", "task.steps=20"],
    # Little timing per point: the UI is under test here, not the measurement.
    "matmul": [
        "task=matmul",
        "device=cpu",
        "task.size=64,128,256",
        "task.warmup=1",
        "task.min_run_time_s=0.05",
    ],
}


def missing_browser() -> Optional[str]:
    """Why the browser tests cannot run here (None when they can)."""
    if sync_playwright is None:
        return "playwright is missing: pip install -e '.[dev]'"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (Debian: apt-get install chromium)"
    return None


@dataclass
class Sweep:
    """A recorded sweep, as the store has it."""

    experiment_id: str
    parent: Run
    children: list[Run]  # by name
    objective: str  # the metric name the task's objective is logged under
    review: str  # the page the sweep's last line says to open, as a route of the UI

    @property
    def best(self) -> Run:
        """The child with the lowest objective (both tasks minimise theirs)."""
        return min(self.children, key=lambda run: run.data.metrics[self.objective])


def _logged_objective(task: str, run: Run) -> str:
    """The metric name holding the task's objective (``objective/...``)."""
    name = tasks.load(task).objective_key
    assert name in run.data.metrics, f"{run.info.run_name}: no {name!r} in {run.data.metrics}"
    return name


def _artifacts(client: MlflowClient, run_id: str, path: Optional[str] = None) -> list[str]:
    return [item.path for item in client.list_artifacts(run_id, path) if not item.is_dir]


def _record(root: Path, store: str, task: str) -> Sweep:
    result = run_cli(["-m", *SWEEPS[task]], cwd=root, env={"MLFLOW_TRACKING_URI": store})
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name(task)
    assert experiment is not None, f"no experiment {task!r}: {client.search_experiments()}"
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = [run for run in runs if run is not parent]
    assert len(children) > 1
    # the sweep made its report itself, and said where to look
    assert _artifacts(client, parent.info.run_id, "report"), "no report/ in the parent run"
    printed = re.search(
        r"^Review it with: .* then open http://127\.0\.0\.1:5000/#/(\S+)$", result.stdout, re.M
    )
    assert printed, result.stdout[-3000:]
    return Sweep(
        experiment.experiment_id,
        client.get_run(parent.info.run_id),
        sorted(children, key=lambda run: run.info.run_name),
        _logged_objective(task, children[0]),
        printed.group(1),
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, empty_store):
    """Both sweeps in a SQLite store (recorded directly, as a user's local store), and
    ``mlflow server`` serving it."""
    reason = missing_browser()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser tests: {reason}")
        pytest.skip(reason)
    server = MlflowServer(tmp_path_factory.mktemp("ui"), store_from=empty_store)
    try:
        # One after the other: a server starting on a SQLite file that a sweep is writing
        # was seen waiting past its 120 s on a loaded machine.
        sweeps = {task: _record(server.root, server.backend, task) for task in SWEEPS}
        server.start()
        yield server, sweeps
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server(served) -> MlflowServer:
    return served[0]


@pytest.fixture(scope="module")
def sweeps(served) -> dict[str, Sweep]:
    return served[1]


@pytest.fixture(scope="module")
def browser(served):
    """One headless Chromium for the module."""
    # An assertion waits as long as a page load may take: its own default (5 s) is shorter
    # than MLflow's first runs query on a busy machine.
    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
            expect.set_options(timeout=5_000)


@pytest.fixture
def page(browser):
    """A page in a fresh browser profile for each test: the UI keeps what a reviewer did
    (rows expanded, scroll, panels) in the browser's storage."""
    context = new_context(browser, REVIEWER_SETTINGS)
    yield context.new_page()
    context.close()


def new_context(browser, settings: str):
    """A fresh browser profile whose storage holds ``settings`` (a script) on every page."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(WAIT_MS)
    context.add_init_script(settings)
    return context


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ui-screenshots")


def visit(page, server: MlflowServer, route: str, shown: str) -> None:
    """Open a route of the UI and wait until the text ``shown`` is visible on it."""
    page.goto(f"{server.uri}/#/{route}", wait_until="domcontentloaded")
    expect(page.get_by_text(shown, exact=True).first).to_be_visible()


def screenshot_charts(page, shots: Path, name: str, record_property, chart: str) -> None:
    """A screenshot once the chart titled ``chart`` has drawn (plotly's traces are there)."""
    title = page.get_by_role("heading", name=chart, exact=True)
    card = page.get_by_test_id(CARD).filter(has=title)
    card.locator(".js-plotly-plot g.trace").first.wait_for()
    screenshot(page, shots, name, record_property)


def screenshot(page, shots: Path, name: str, record_property) -> None:
    path = shots / f"ui-{name}.png"
    page.screenshot(path=path)
    record_property("screenshot", str(path))
    extra = os.environ.get("EXPERIMENTS_UI_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(extra) / path.name)


def expect_image(page, path: str) -> None:
    """The artifact viewer shows the artifact ``path`` as a loaded image."""
    image = page.get_by_role("img", name=path, exact=True)  # its alt text is the path
    expect(image).to_be_visible()
    page.wait_for_function("image => image.complete", arg=image.element_handle())
    assert image.evaluate("image => image.naturalWidth") > 0, f"{path} did not load"


def expand(page, sweep: Sweep) -> None:
    """Show a sweep's child runs under its parent in the runs list."""
    parent = page.get_by_role("link", name=sweep.parent.info.run_name, exact=True)
    # The button that expands a parent sits in the same cell as its name.
    parent.locator("xpath=ancestor::*[@role='gridcell'][1]").get_by_role("button").click()


@pytest.mark.parametrize("task", list(SWEEPS))
def test_the_runs_table_shows_the_sweep_and_its_children(
    page, server, sweeps, task, shots, record_property
) -> None:
    sweep = sweeps[task]
    visit(page, server, f"experiments/{sweep.experiment_id}/runs", sweep.parent.info.run_name)
    expand(page, sweep)
    for child in sweep.children:
        expect(page.get_by_role("link", name=child.info.run_name, exact=True)).to_be_visible()
    if task == "minimize":
        screenshot(page, shots, "runs", record_property)


@pytest.mark.parametrize("task", list(SWEEPS))
def test_the_page_a_sweep_points_to_opens_on_its_runs_in_a_new_browser(
    browser, server, sweeps, task
) -> None:
    # No mode chosen before (a first visit): the printed URL itself says "runs", not GenAI.
    context = new_context(browser, PANEL_CLOSED)
    page = context.new_page()
    try:
        sweep = sweeps[task]
        visit(page, server, sweep.review, sweep.parent.info.run_name)
        for child in sweep.children:  # the parent's page lists its jobs by name
            expect(page.get_by_role("link", name=child.info.run_name, exact=True)).to_be_visible()
        # the side bar of MLflow's "Model training" mode: Runs, Models, Traces
        side = page.get_by_role("list").get_by_role("link", name="Runs", exact=True)
        expect(side).to_be_visible()
        expect(page.get_by_text("Evaluation runs", exact=True)).to_have_count(0)  # GenAI's
    finally:
        context.close()


@pytest.mark.parametrize("task", list(SWEEPS))
def test_a_child_run_page_shows_the_params_its_sweep_varies(page, server, sweeps, task) -> None:
    sweep = sweeps[task]
    run = sweep.best
    params = [child.data.params for child in sweep.children]
    varied = sorted(key for key in run.data.params if len({p.get(key) for p in params}) > 1)
    assert varied
    visit(page, server, f"experiments/{sweep.experiment_id}/runs/{run.info.run_id}", varied[0])
    for key in varied:
        row = page.get_by_role("row").filter(has=page.get_by_role("cell", name=key, exact=True))
        expect(row).to_be_visible()
        value = run.data.params[key]
        expect(row.get_by_role("cell", name=value, exact=True)).to_be_visible()


CARD = "experiment-view-compare-runs-card"  # a chart's card on the metrics tab (test id)
SCROLLER = """card => {
  let box = card.parentElement;
  while (box && !(box.scrollHeight > box.clientHeight + 1
                  && ['auto', 'scroll'].includes(getComputedStyle(box).overflowY)))
    box = box.parentElement;
  return box || document.scrollingElement;
}"""
# Each rendered card's title and where the card is within the scrolled content (its top
# and its left: a section lays its cards out in rows).
CARD_PLACES = f"""box => Array.from(box.querySelectorAll('[data-testid="{CARD}"]')).map(card => [
  card.querySelector('h4') && card.querySelector('h4').innerText,
  card.getBoundingClientRect().top - box.getBoundingClientRect().top + box.scrollTop,
  card.getBoundingClientRect().left - box.getBoundingClientRect().left])"""


def chart_places(page) -> dict[str, tuple[float, float]]:
    """Every chart of the metrics tab: its title -> (top, left) of its card in the content.

    Cards out of view are not rendered, so this scrolls down half a view at a time.
    """
    box = page.get_by_test_id(CARD).first.evaluate_handle(SCROLLER)
    places: dict[str, tuple[float, float]] = {}
    position = 0
    while True:
        page.wait_for_timeout(300)  # cards scrolled into view render
        for title, top, left in box.evaluate(CARD_PLACES):
            places.setdefault(title, (top, left))
        height, view = box.evaluate("box => [box.scrollHeight, box.clientHeight]")
        if position + view >= height:
            return places
        position += view // 2
        box.evaluate("(box, y) => box.scrollTo(0, y)", position)


def short_title(metric: str) -> str:
    """A chart's title on a run's page: the metric's name without its section."""
    return metric.rsplit("/", 1)[-1]


@pytest.mark.parametrize("task", list(SWEEPS))
def test_a_child_runs_first_chart_is_its_objective(
    page, server, sweeps, task, shots, record_property
) -> None:
    sweep = sweeps[task]
    run = sweep.best
    title = short_title(sweep.objective)
    # Every other chart of the run: its other results, its timings, its variables.
    others = {short_title(name) for name in run.data.metrics if name != sweep.objective}
    assert title not in others, f"two charts would be titled {title!r}: {sorted(run.data.metrics)}"
    assert any(name.startswith("time/") for name in run.data.metrics)
    route = f"experiments/{sweep.experiment_id}/runs/{run.info.run_id}/model-metrics"
    visit(page, server, route, run.info.run_name)
    page.get_by_test_id(CARD).first.wait_for()
    if task == "minimize":
        screenshot_charts(page, shots, "metrics", record_property, title)
    assert_first(chart_places(page), title, others)


def assert_first(places: dict[str, tuple[float, float]], title: str, others: set[str]) -> None:
    """The chart ``title`` comes before every chart in ``others``: above them, or left of
    those in its row."""
    assert title in places, f"no {title!r} chart among {ordered(places)}"
    assert others <= places.keys(), f"charts {sorted(others - places.keys())} not shown"
    first = places[title]
    before = [name for name in ordered(places) if name in others and precedes(places[name], first)]
    assert not before, (
        f"the objective's chart {title!r} is not first: {before} come before it; "
        f"charts in order: {ordered(places)}"
    )


def precedes(place: tuple[float, float], other: tuple[float, float]) -> bool:
    """A card at ``place`` comes before one at ``other``: a row above, or left in the row."""
    (top, left), (other_top, other_left) = place, other
    return top < other_top - 1 or (abs(top - other_top) <= 1 and left <= other_left)


def ordered(places: dict[str, tuple[float, float]]) -> list[str]:
    """The charts' titles as a reader meets them: row by row, left to right."""
    return sorted(places, key=lambda name: (round(places[name][0]), places[name][1]))


@pytest.mark.parametrize("task", list(SWEEPS))
def test_the_runs_chart_view_shows_the_objective_first_of_the_jobs_charts(
    page, server, sweeps, task, shots, record_property
) -> None:
    sweep = sweeps[task]
    others = {name for run in sweep.children for name in run.data.metrics} - {sweep.objective}
    # The runs table's chart view (its own URL parameter), children shown: one chart per
    # metric across the sweep's runs, titled with the whole metric name. The parent's own
    # best/<name> section stays above the jobs' charts.
    route = f"experiments/{sweep.experiment_id}/runs?compareRunsMode=CHART"
    visit(page, server, route, sweep.parent.info.run_name)
    expand(page, sweep)
    section = sweep.objective.rsplit("/", 1)[0]
    page.get_by_role("heading", name=re.compile("^" + section)).first.wait_for()
    if task == "minimize":
        screenshot_charts(page, shots, "charts", record_property, sweep.objective)
    assert_first(chart_places(page), sweep.objective, others)


@pytest.mark.parametrize("task", list(SWEEPS))
def test_a_child_run_shows_its_plots_as_images(
    page, server, sweeps, task, shots, record_property
) -> None:
    sweep = sweeps[task]
    run = sweep.best
    client = MlflowClient(server.backend)
    plots = [path for path in _artifacts(client, run.info.run_id) if path.endswith(".png")]
    assert plots
    route = f"experiments/{sweep.experiment_id}/runs/{run.info.run_id}/artifacts"
    visit(page, server, route, plots[0])
    for plot in plots:
        page.get_by_text(plot, exact=True).click()
        expect_image(page, plot)
        if task == "minimize" and plot == plots[-1]:
            screenshot(page, shots, "artifact", record_property)


@pytest.mark.parametrize("task", list(SWEEPS))
def test_the_sweep_parent_shows_its_report_figures_as_images(
    page, server, sweeps, task, shots, record_property
) -> None:
    sweep = sweeps[task]
    parent = sweep.parent.info.run_id
    client = MlflowClient(server.backend)
    figures = [path for path in _artifacts(client, parent, "report") if path.endswith(".png")]
    assert figures
    visit(page, server, f"experiments/{sweep.experiment_id}/runs/{parent}/artifacts", "report")
    page.get_by_text("report", exact=True).click()  # the folder opens in the file tree
    for figure in figures:
        page.get_by_text(figure.rsplit("/", 1)[-1], exact=True).click()
        expect_image(page, figure)
        if task == "minimize" and figure == figures[0]:
            screenshot(page, shots, "report", record_property)
