"""The dashboard end to end in a real headless Chromium (Debian's, driven by Playwright): `lamp serve` with its
embedded worker on a private LAMP_HOME; upload a CSV, launch jobs on a tiny model, watch them succeed with their
curves drawn, compare them, ask the playground; bad input shows its error; the file routes and the login hold.

Screenshots of every tab go to $LAMP_SCREENSHOTS (default test-artifacts/screenshots)."""

from __future__ import annotations

import os
import re
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from serve_support import Server
from test_jobs_support import report

CHROMIUM = os.environ.get("LAMP_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
SHOTS = Path(os.environ.get("LAMP_SCREENSHOTS", Path(__file__).resolve().parents[1] / "test-artifacts/screenshots"))
JOB_TIMEOUT_MS = 240_000

pytestmark = pytest.mark.browser


def _need_browser() -> None:
    if Path(CHROMIUM).is_file():
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"no Chromium at {CHROMIUM} under CI: scripts/ci-services.sh installs Debian's chromium")
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set LAMP_CHROMIUM)")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    _need_browser()
    # The tiny models live in pytest's folders: the server offers them (--allow-dir), as an operator would.
    srv = Server(tmp_path_factory.mktemp("serve-home"), "--max-upload-mb", "1", "--allow-dir",
                 str(tmp_path_factory.getbasetemp().resolve()))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def page(server: Server) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.set_default_timeout(30_000)
        start = time.monotonic()
        pg.goto(server.url)
        pg.locator("#launch").wait_for()
        report("dashboard page load", seconds=round(time.monotonic() - start, 2))
        yield pg
        browser.close()


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def tab(page: Any, name: str) -> None:
    page.get_by_role("tab", name=name).click()
    time.sleep(1.5)  # opening Compare or Playground reloads their job lists


def field(page: Any, name: str) -> Any:
    return page.locator(f"#field-{name}").locator("input, textarea").first


def set_field(page: Any, name: str, value: object) -> None:
    box = field(page, name)
    box.fill(str(value))
    box.press("Tab")


def pick(page: Any, dropdown: str, option: str) -> None:
    page.keyboard.press("Escape")
    page.locator("h2").first.click()  # blur: a focused dropdown does not reopen on click
    box = page.locator(f"#{dropdown} input").first
    for attempt in range(3):  # on a busy machine the tab's fresh job list can land after the first look
        box.click()
        box.fill(option)  # filters the list to the wanted choice
        try:
            page.get_by_role("option", name=re.compile(re.escape(option))).first.click(timeout=10_000)
            break
        except Exception:
            if attempt == 2:
                raise
            page.keyboard.press("Escape")
            page.locator("h2").first.click()
    time.sleep(0.3)


def wait_status(page: Any, job_id: int, status: str, timeout: float = JOB_TIMEOUT_MS / 1000) -> None:
    """Wait until the jobs table shows the job with this status (its row reads "ID<TAB>STATUS...")."""
    pattern = re.compile(rf"(^|\n)\s*{job_id}\s+{status}\b")
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = page.locator("#jobs-table").inner_text()
        if pattern.search(text):
            return
        time.sleep(1)
    shot(page, f"timeout-job-{job_id}")
    raise AssertionError(f"job {job_id} not {status} in {timeout:.0f} s; the table reads:\n{text}")


def watch_progress(page: Any, job_id: int, until: Any, timeout: float = JOB_TIMEOUT_MS / 1000) -> list[str]:
    """The job's Progress cells seen in the jobs table until `until()` holds."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            shot(page, f"timeout-progress-{job_id}")
            raise AssertionError(f"job {job_id}: gave up waiting; its progress read {seen}")
        text = " ".join(page.locator("#jobs-table").inner_text().split())  # cells may sit on lines of their own
        row = re.search(rf"(?:^| ){job_id} (QUEUED|RUNNING|SUCCEEDED)\b.*?(?= \d+ [A-Z_]{{6,}}\b|$)", text)
        if row and (not seen or seen[-1] != row.group(0)):
            seen.append(row.group(0))
        time.sleep(0.25)
    return seen


def eval_steps(page: Any) -> list[int]:
    """The steps of the eval panel's validation points, as the browser holds the figure."""
    return page.evaluate("""() => {
        const plot = document.querySelector('#job-curves .js-plotly-plot');
        const val = (plot && plot.data || []).filter(t => String(t.name).startsWith('val '));
        return val.length ? Array.from(val[0].x) : [];
    }""")


def test_a_bad_upload_shows_its_error(page: Any, tmp_path: Path) -> None:
    page.locator("#field-source").get_by_label("my own file").check()
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    page.locator("#upload input[type=file]").set_input_files(str(empty))
    page.locator("#upload-error").get_by_text("empty.csv: file is empty").filter(visible=True).first.wait_for()
    big = tmp_path / "big.csv"
    big.write_text("text,label\n" + "some words,yes\n" * 80_000)  # ~1.2 MiB, over the 1 MiB limit
    page.locator("#upload input[type=file]").set_input_files(str(big))
    page.get_by_text(re.compile("exceed|too large|over the upload limit", re.I)).filter(visible=True).first.wait_for()
    shot(page, "new-job-bad-upload")
    header = tmp_path / "header.csv"  # a header and no rows: Launch repeats why, not a generic "upload a file"
    header.write_text("text,label\n")
    page.locator("#upload input[type=file]").set_input_files(str(header))
    page.locator("#upload-error").get_by_text("header.csv").filter(visible=True).first.wait_for()
    reason = page.locator("#upload-error").inner_text().strip()
    page.locator("#launch").click()
    page.locator("#form-error").get_by_text(re.compile("problem")).filter(visible=True).first.wait_for()
    assert "header.csv" in page.locator("#upload-error").inner_text(), reason
    good = tmp_path / "good.csv"  # a good file clears the old problems' banner
    good.write_text("text,label\n" + "".join(f"review {i},{'yes' if i % 2 else 'no'}\n" for i in range(20)))
    page.locator("#upload input[type=file]").set_input_files(str(good))
    page.locator("#preview").get_by_text("review 0").filter(visible=True).first.wait_for()
    page.locator("#form-error").get_by_text(re.compile("problem")).wait_for(state="hidden")
    page.reload()  # an empty form again, with the upload widget open for the next test
    page.locator("#field-source").get_by_label("my own file").check()
    page.locator("#upload input[type=file]").wait_for(state="attached")


def test_bad_knobs_are_reported_beside_their_fields(page: Any) -> None:
    set_field(page, "rank", 200)
    set_field(page, "steps", 0)
    time.sleep(0.5)  # each field's own change (which clears its problem) lands before Launch shows the new ones
    page.locator("#launch").click()
    page.locator("#field-rank").get_by_text(re.compile("rank=200")).filter(visible=True).first.wait_for()
    page.locator("#field-steps").get_by_text(re.compile("steps=0")).filter(visible=True).first.wait_for()
    page.locator("#form-error").get_by_text(re.compile("problem")).filter(visible=True).first.wait_for()
    shot(page, "new-job-field-errors")
    set_field(page, "rank", 4)  # editing a field clears its problem
    page.locator("#field-rank").get_by_text(re.compile("rank=200")).wait_for(state="hidden")
    steps = page.locator("#field-steps")
    assert steps.get_by_text(re.compile("steps=0")).count() == 1, steps.inner_text()


def test_every_preset_fills_the_form_without_an_error(page: Any) -> None:
    from app.forms import PRESETS

    page.reload()  # the plain form, without the earlier tests' problems
    page.locator("#launch").wait_for()
    for name, preset in PRESETS.items():
        pick(page, "preset", name)
        page.locator("#preset-note").get_by_text(preset.note[:40]).filter(visible=True).first.wait_for()
    time.sleep(3)  # past the estimate and parameter count each preset starts
    toasts = page.locator(".toast-body")
    assert toasts.count() == 0, toasts.all_inner_texts()
    errors = page.locator(".lamp-field-error")
    assert errors.count() == 0, errors.all_inner_texts()
    page.reload()  # the next tests start from the plain form
    page.locator("#launch").wait_for()


def _launch(page: Any, tiny_llama_dir: Path, method: str) -> int:
    tab(page, "New job")
    set_field(page, "model", tiny_llama_dir)
    page.locator("#field-method").get_by_label("lamp").check()  # every knob editable
    for name, value in (("length", 8), ("rank", 4), ("pool", 2), ("steps", 8), ("batch-size", 4),
                        ("eval-every", 4), ("max-length", 64), ("lr", 0.05)):
        set_field(page, name, value)
    page.locator("#field-method").get_by_label(method).check()
    pick(page, "field-device", "cpu")
    time.sleep(0.5)
    page.locator("#launch").click()
    result = page.locator("#launch-result").get_by_text(re.compile(r"Job \d+ queued"))
    result.wait_for(state="attached")  # the page may already have switched to the Jobs tab
    return int(re.search(r"Job (\d+) queued", result.inner_text()).group(1))  # type: ignore[union-attr]


def test_upload_launch_and_watch_a_job_succeed_with_its_curve(page: Any, server: Server, tiny_llama_dir: Path,
                                                              sentiment_csv: Path) -> None:
    tab(page, "New job")
    page.locator("#field-source").get_by_label("my own file").check()
    page.locator("#upload input[type=file]").set_input_files(str(sentiment_csv))
    page.locator("#preview").get_by_text("wonderful acting 0").filter(visible=True).first.wait_for()
    assert "review" in page.locator("#field-text-column input").input_value()
    assert "verdict" in page.locator("#field-label-column input").input_value()
    page.locator("#data-note").get_by_text("Every one of the 48 rows has an input and a label").wait_for()
    params = page.locator("#param-count")
    set_field(page, "length", 8)
    set_field(page, "rank", 4)
    set_field(page, "pool", 2)
    set_field(page, "model", tiny_llama_dir)
    try:
        params.get_by_text(re.compile(r"d = 32")).filter(visible=True).first.wait_for()
    except Exception as exc:
        shot(page, "param-count-timeout")
        raise AssertionError(f"param count reads: {params.inner_text()!r}") from exc
    set_field(page, "steps", 8)
    page.keyboard.press("Escape")  # close whichever dropdown the last Tab opened
    page.locator("#cost-estimate").get_by_text(re.compile(r"peak memory")).filter(visible=True).first.wait_for()
    page.locator("#field-steps").get_by_text(re.compile("steps=0")).wait_for(state="hidden")  # the earlier test's
    assert page.locator(".lamp-field-error").count() == 0  # the problems shown earlier went as their fields changed
    shot(page, "new-job")
    started = time.monotonic()
    job_id = _launch(page, tiny_llama_dir, "lamp")
    # The page switches to the Jobs tab and follows the new job.
    page.locator("#job-details").get_by_text(f"Job {job_id}").filter(visible=True).first.wait_for()
    seen = watch_progress(page, job_id, until=lambda: page.locator("#job-curves .scatterlayer .trace").count() > 0)
    report("dashboard submit to first curve point (tiny model)", seconds=round(time.monotonic() - started, 1))
    # Before its first step the job says what it is doing (loading the model and data), not just "0/8".
    assert any(re.search(r"· loading", cell) for cell in seen), seen
    wait_status(page, job_id, "SUCCEEDED")
    # The last validation (step 8) and the test result arrive without a reload: the poll redraws on new points.
    deadline = time.monotonic() + 20
    while eval_steps(page) != [4, 8] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert eval_steps(page) == [4, 8]
    page.locator("#job-details").get_by_text(re.compile("trainable params")).filter(visible=True).first.wait_for()
    assert page.locator("#job-curves .scatterlayer .trace").count() >= 3
    uploads = sorted(p.name for p in (server.home / "uploads").rglob("*.csv"))
    assert uploads == ["good.csv", "reviews.csv"]  # the accepted files (the bad-upload test's good one too), no others
    assert not list((server.home / "gradio-tmp").rglob("reviews.csv"))  # the upload itself is gone
    assert f"job={job_id}" in page.url  # the followed job is in the address
    page.reload()  # nothing is lost: the jobs come back from the store, the followed job from the address
    tab(page, "Jobs")
    page.locator("#job-details").get_by_text(f"Job {job_id}: SUCCEEDED").filter(visible=True).first.wait_for()
    page.locator("#job-curves .scatterlayer .trace").first.wait_for()
    page.locator("#download-artifact").click()
    page.locator("#download").get_by_text(f"lamp-job-{job_id}").filter(visible=True).first.wait_for()
    shot(page, "jobs")
    # Inside the prompt: computed on demand for the followed job.
    page.locator("#inside-prompt").get_by_text("Inside the prompt").first.click()
    page.locator("#inspect").click()
    page.locator("#inspect-heatmap .js-plotly-plot").wait_for(timeout=120_000)
    page.locator("#inspect-tokens").get_by_text(re.compile(r"\w")).first.wait_for()
    assert page.locator("#inspect-q .js-plotly-plot").count() == 1
    shot(page, "inside-prompt")


def test_compare_two_jobs(page: Any, tiny_llama_dir: Path) -> None:
    second = _launch(page, tiny_llama_dir, "prompt-tuning")
    wait_status(page, second, "SUCCEEDED")
    tab(page, "Compare")
    pick(page, "compare-jobs", "lamp")
    pick(page, "compare-jobs", "prompt-tuning")
    page.locator("#compare").click()
    page.locator("#compare-table").get_by_text("prompt-tuning").filter(visible=True).first.wait_for()
    page.locator("#compare-cost .js-plotly-plot").wait_for()
    page.locator("#compare-csv").get_by_text("lamp-compare").filter(visible=True).first.wait_for()
    shot(page, "compare")


def test_playground_answers_beside_the_bare_model(page: Any) -> None:
    tab(page, "Playground")
    pick(page, "playground-jobs", "lamp")
    pick(page, "playground-jobs", "prompt-tuning")
    page.locator("#playground-input textarea").fill("a wonderful film, I loved it")
    page.locator("#ask").click()
    answers = page.locator("#playground-answers")
    answers.get_by_text(re.compile(r"#\d+ prompt-tuning")).filter(visible=True).first.wait_for(timeout=120_000)
    lines = [line.strip() for line in answers.inner_text().splitlines()]
    assert sum(re.fullmatch(r"#\d+ (lamp|prompt-tuning)", line) is not None for line in lines) == 2, lines
    # each job's answer in its label words, and the bare model's once per input it answers (the jobs here trained on
    # the upload and on the built-in task: two inputs, two bare rows, each naming its job; one input would be one row)
    bare = [line for line in lines if line.startswith("bare model")]
    assert len(bare) == 2 and all(re.search(r"for #\d+$", line) for line in bare), " | ".join(lines)
    assert sum(line in ("good", "bad", "positive", "negative") for line in lines) == 2 + len(bare), " | ".join(lines)
    assert re.search(r"(good|bad) [+-]\d\.\d{3}", answers.inner_text())  # what the prompt changed, 3 decimals
    shot(page, "playground")


def study_field(page: Any, name: str) -> Any:
    return page.locator(f"#study-{name}").locator("input, textarea").first


def test_a_study_sweeps_the_knobs_and_draws_its_pareto_charts(page: Any, server: Server,
                                                              tiny_llama_dir: Path) -> None:
    tab(page, "Study")
    for name, value in (("model", tiny_llama_dir), ("lengths", "8"), ("ranks", "2, x"), ("pools", "2"),
                        ("lrs", "0.05"), ("seeds", "1, 2"), ("steps", 4), ("batch-size", 4), ("eval-every", 2),
                        ("max-eval", 8), ("max-length", 64)):
        box = study_field(page, name)
        box.fill(str(value))
        box.press("Tab")
    page.locator("#study-pruner").get_by_label("none").check()
    pick(page, "study-device", "cpu")
    page.locator("#launch-study").click()  # "x" is no rank: the problem shows beside Ranks, nothing is launched
    page.locator("#study-ranks").get_by_text(re.compile("rank: 'x' is not an int")).filter(visible=True).first \
        .wait_for()
    shot(page, "study-field-error")
    box = study_field(page, "ranks")
    box.fill("2, 4")
    box.press("Tab")
    page.locator("#study-plan").get_by_text(re.compile(r"a grid of 4 distinct runs")).filter(visible=True).first \
        .wait_for()
    plan = page.locator("#study-plan")
    study_field(page, "steps").fill("6")  # the plan follows every field, steps included
    study_field(page, "steps").press("Tab")
    plan.get_by_text(re.compile(r"each 6 steps")).filter(visible=True).first.wait_for()
    study_field(page, "steps").fill("4")
    study_field(page, "steps").press("Tab")
    plan.get_by_text(re.compile(r"each 4 steps")).filter(visible=True).first.wait_for()
    started = time.monotonic()
    page.keyboard.press("Escape")  # no dropdown left open over the button
    page.locator("#launch-study").click()
    launched = page.locator("#study-launched").get_by_text(re.compile(r"Study #\d+ launched"))
    try:
        launched.wait_for(timeout=90_000)  # the first study creates Optuna's database (its schema and migrations)
    except Exception:
        shot(page, "study-launch-failed")
        raise
    study_id = int(re.search(r"#(\d+)", launched.inner_text()).group(1))  # type: ignore[union-attr]
    summary = page.locator("#study-summary")
    summary.get_by_text(re.compile(r"· DONE ·")).filter(visible=True).first.wait_for(timeout=JOB_TIMEOUT_MS * 2)
    report("dashboard study of 4 tiny runs, launch to done", seconds=round(time.monotonic() - started, 1))
    assert "4 complete" in summary.inner_text()
    page.locator("#pareto-params .js-plotly-plot").wait_for()
    hrefs = set(page.eval_on_selector_all("#pareto-params .annotation a",
                                          "els => els.map(e => e.getAttribute('xlink:href'))"))
    assert len(hrefs) == 2, hrefs  # one per setting (two seeds each), each linking to its job on this dashboard
    assert all(re.fullmatch(re.escape(server.url) + r"\?job=\d+", str(h)) for h in hrefs), hrefs
    page.locator("#study-recommendation").get_by_text("Recommended:").wait_for()
    assert page.locator("#study-settings").get_by_text("lamp l=8 r=2 p=2 lr=0.05").count() >= 1
    page.locator("#study-csv").get_by_text(f"lamp-study-{study_id}").filter(visible=True).first.wait_for()
    assert f"study={study_id}" in page.url
    shot(page, "study")
    # The address reopens the study; a point's link opens its job in the Jobs tab.
    page.reload()
    page.locator("#study-summary").get_by_text(f"Study #{study_id}").filter(visible=True).first.wait_for()
    link = page.locator("#pareto-params .annotation a").first
    job_id = int(str(link.get_attribute("xlink:href")).split("=")[1])
    with page.context.expect_page() as opened:
        link.click()  # a point's link opens its job, in the Jobs tab of a new browser tab
    job_page = opened.value
    job_page.locator("#job-details").get_by_text(f"Job {job_id}: SUCCEEDED").filter(visible=True).first.wait_for()
    assert f"of study #{study_id} " in job_page.locator("#job-details").inner_text()
    job_page.goto(server.url + "?study=999")  # a stale address opens the tab with no study picked, no error
    job_page.locator("#study-summary").get_by_text("Pick a study").filter(visible=True).first.wait_for()
    time.sleep(4)  # past a refresh of the tab
    assert job_page.locator(".toast-body").count() == 0
    job_page.close()


def test_file_routes_serve_nothing_outside_the_apps_data(server: Server) -> None:
    uploaded = [str(p) for p in (server.home / "uploads").rglob("*.csv")]
    assert uploaded  # the earlier test's upload, kept for its job but never served
    for target in ("/etc/passwd", str(server.home / "lamp.db"), str(server.log), *uploaded):
        url = f"{server.url}gradio_api/file={target}"
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(url, timeout=10)
        assert info.value.code in (403, 404), url


def test_a_login_guards_the_page_and_every_handler(page: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    srv = Server(tmp_path_factory.mktemp("auth-home"), "--no-worker", "--auth", "ann:s3cret")
    try:
        for path in ("gradio_api/info", "config", "gradio_api/queue/status"):
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(srv.url + path, timeout=10)
            assert info.value.code in (401, 403), path
        context = page.context.browser.new_context()  # no cookies of the other server
        try:
            pg = context.new_page()
            pg.goto(srv.url)
            pg.get_by_label(re.compile("username", re.I)).fill("ann")
            pg.get_by_label(re.compile("password", re.I)).fill("wrong")
            pg.get_by_role("button", name=re.compile("login", re.I)).click()
            pg.get_by_text(re.compile("incorrect", re.I)).filter(visible=True).first.wait_for()
            pg.get_by_label(re.compile("username", re.I)).fill("ann")
            pg.get_by_label(re.compile("password", re.I)).fill("s3cret")
            pg.get_by_role("button", name=re.compile("login", re.I)).click()
            pg.locator("#launch").wait_for()
            shot(pg, "login-then-dashboard")
        finally:
            context.close()
    finally:
        srv.stop()
