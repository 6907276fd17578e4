"""The dashboard's handlers as plain functions, without a browser: the New job form, uploads, the Jobs tab, Compare
and the Playground, on a real SQLite store with jobs run by the real worker path on a tiny model."""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_jobs_support import tiny_spec, worker_store

from app import compare, forms, monitor, playground
from app.access import Access
from app.settings import parse_auth
from app.uploads import accept_upload, guess_columns, resolve_upload
from core.errors import ConfigError, DataError
from core.methods import DeptConfig, LampConfig, ResidualPtConfig, UlptConfig, trainable_param_counts
from jobs import store
from jobs.db import read
from jobs.models import Status


def _store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str) -> Iterator[Path]:
    for _url in worker_store(tmp_path, monkeypatch, backend):
        yield tmp_path


@pytest.fixture()
def store_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    yield from _store(tmp_path, monkeypatch, "sqlite")


@pytest.fixture(params=["sqlite", "redis+postgres"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    yield from _store(tmp_path, monkeypatch, request.param)


def _form(**changes: object) -> dict[str, object]:
    return {**forms.DEFAULTS, **changes}


def _upload(tmp_path: Path, name: str, text: str) -> Path:
    """A file as Gradio leaves it after a browser posted it: a folder of its own under its upload folder."""
    folder = tmp_path / "gradio-upload" / name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def _uploaded(tmp_path: Path, access: Access, name: str, text: str) -> str:
    """The id the dashboard gives the client for an accepted upload."""
    return accept_upload(_upload(tmp_path, name, text), access=access).id


# ---- New job form ----

def test_the_default_form_is_the_measured_default_run() -> None:
    spec, attempts = forms.spec_from_form(_form())
    assert spec.method == LampConfig(length=100, rank=8, pool=2)
    assert (spec.data.task, spec.model.name, spec.train.steps, spec.train.lr, attempts) == (
        "rotten_tomatoes", "default", 150, None, 3)


def test_every_bad_value_is_reported_beside_its_own_field() -> None:
    with pytest.raises(forms.FormError) as info:
        forms.spec_from_form(_form(rank=200, steps=0, lr="0.3x", model=" "))
    assert {"lr"} <= set(info.value.problems)  # numbers that are not numbers stop the rest first
    with pytest.raises(forms.FormError) as info:
        forms.spec_from_form(_form(rank=200, pool=3, steps=0, batch_size=0, model=" ", lr=20, max_attempts=0))
    problems = info.value.problems
    assert set(problems) >= {"rank", "pool", "steps", "batch_size", "model", "lr", "max_attempts"}
    assert "rank=200" in problems["rank"] and "pool=3" in problems["pool"]
    assert "lr=20" in problems["lr"]


def test_core_problems_map_to_form_fields_by_setting() -> None:
    assert forms.field_of("steps") == forms.field_of("epochs") == "steps"
    assert forms.field_of("train_file") == forms.field_of("eval_file") == "data_file"
    assert forms.field_of("init") == "method" and forms.field_of("checkpoint_every") == "eval_every"
    assert forms.field_of("warmup_steps") == forms.field_of(None) == ""  # not on the form: shown for the whole form
    # Every setting the form builds has a field (a problem about it can never land nowhere).
    from dataclasses import fields

    from core.spec import DataConfig, ModelConfig, TrainConfig
    shown = {"name": "model", "dtype": "dtype", "quantize": "quantize", "task": "task", "data_dir": "data_dir",
             "train_file": "data_file", "text_column": "text_column", "template": "template",
             "label_column": "label_column", "kind": "kind", "steps": "steps", "batch_size": "batch_size",
             "lr": "lr", "weight_decay": "weight_decay", "max_length": "max_length", "eval_every": "eval_every",
             "seed": "seed", "device": "device", "init_from": "init_from"}
    settings = {f.name for c in (ModelConfig, DataConfig, TrainConfig) for f in fields(c)}
    assert set(shown) <= settings
    assert all(forms.field_of("model" if s == "name" else s) == f for s, f in shown.items())
    with pytest.raises(forms.FormError) as info:  # each problem beside the field of the setting it names
        forms.spec_from_form(_form(quantize="4bit", device="cpu", rank=200))
    assert set(info.value.problems) == {"quantize", "rank"}


def test_own_data_needs_a_file_and_columns_and_a_label_with_two_classes(store_env: Path, gradio_tmp: Path,
                                                                       access: Access) -> None:
    with pytest.raises(forms.FormError) as info:
        forms.spec_from_form(_form(source=forms.OWN_DATA), access)
    assert set(info.value.problems) >= {"data_file", "text_column", "label_column"}
    one_class = _uploaded(store_env, access, "one.csv", "text,label\n" + "".join(f"row {i},yes\n" for i in range(20)))
    with pytest.raises(forms.FormError) as info:
        forms.spec_from_form(_form(source=forms.OWN_DATA, data_file=one_class, text_column="text",
                                   label_column="label", kind="classification"), access)
    assert "label_column" in info.value.problems
    assert "one.csv" in info.value.problems["label_column"]


def test_own_data_form_builds_the_same_spec_as_the_cli(store_env: Path, gradio_tmp: Path, access: Access,
                                                       sentiment_csv: Path) -> None:
    upload = _uploaded(store_env, access, "reviews.csv", sentiment_csv.read_text())
    spec, _ = forms.spec_from_form(_form(source=forms.OWN_DATA, data_file=upload, text_column="review",
                                         label_column="verdict", method="dpt", length=20, rank=4, lr="0.05"), access)
    assert (spec.data.task, Path(spec.data.train_file or "").name, spec.data.text_column, spec.data.label_column) == (
        None, "reviews.csv", "review", "verdict")
    assert Path(spec.data.train_file or "").read_text() == sentiment_csv.read_text()
    assert (spec.method.name, spec.train.lr) == ("dpt", 0.05)


def test_presets_fill_only_form_fields() -> None:
    for label in forms.PRESETS:
        values = forms.preset_values(label)
        assert set(values) <= set(forms.FIELDS)
        forms.spec_from_form(_form(**values))  # every preset is a valid job
    with pytest.raises(ConfigError):
        forms.preset_values("nope")


def test_the_form_passes_the_recipe_choices_and_the_paper_preset_is_the_papers() -> None:
    """"method's default" leaves lr scaling and the start to the method's recipe; a choice overrides it; the
    Paper preset is the paper's absolute rate and common-token start, not lr 0.3 relative to each tensor's size."""
    spec, _ = forms.spec_from_form(_form())
    assert (spec.train.lr_scaling, spec.train.prompt_init) == (None, None)
    spec, _ = forms.spec_from_form(_form(lr_scaling="absolute", prompt_init="vocab"))
    assert (spec.train.lr_scaling, spec.train.prompt_init) == ("absolute", "vocab")
    paper, _ = forms.spec_from_form(_form(**forms.preset_values("Paper (T5 recipe)")))
    assert (paper.train.lr, paper.train.lr_scaling, paper.train.prompt_init) == (0.3, "absolute", "vocab")
    quick, _ = forms.spec_from_form(_form(**forms.preset_values("Quick look")))
    assert quick.data.max_test_examples == forms.QUICK_TEST_EXAMPLES and "100 test examples" in \
        forms.PRESETS["Quick look"].note
    assert paper.data.max_test_examples is None
    with pytest.raises(forms.FormError) as bad:
        forms.spec_from_form(_form(max_test_examples="many"))
    assert set(bad.value.problems) == {"max_test_examples"}
    back = forms.preset_values("Measured default")  # a preset after the paper's resets the choices
    assert (back["lr"], back["lr_scaling"], back["prompt_init"]) == ("", forms.RECIPE_CHOICE, forms.RECIPE_CHOICE)
    with pytest.raises(forms.FormError) as info:
        forms.spec_from_form(_form(prompt_init="words"))
    assert set(info.value.problems) == {"prompt_init"}


def test_the_form_shows_only_the_knobs_a_method_has() -> None:
    assert {"rank", "pool"} <= forms.knobs_of("lamp")
    assert "rank" in forms.knobs_of("dpt") and "pool" not in forms.knobs_of("dpt")
    assert not {"rank", "pool"} & forms.knobs_of("prompt-tuning")
    assert "bottleneck" in forms.knobs_of("residual-pt") and "rank" not in forms.knobs_of("residual-pt")
    assert {"rank", "positions", "pair_lr"} <= forms.knobs_of("dept") and "pool" not in forms.knobs_of("dept")
    assert "rank" in forms.knobs_of("ulpt") and "positions" not in forms.knobs_of("ulpt")


@pytest.mark.parametrize(("method", "more", "config"), [
    ("residual-pt", {"bottleneck": 16}, ResidualPtConfig(length=20, bottleneck=16)),
    ("dept", {"positions": 64, "pair_lr": 0.5}, DeptConfig(length=20, rank=4, positions=64, pair_lr=0.5)),
    ("ulpt", {}, UlptConfig(length=20, rank=4)),
])
def test_the_new_methods_count_from_their_own_knobs(method: str, more: dict[str, float], config: object) -> None:
    """Each method's formula and count in the form, from the knobs it has; a job from the form gets them."""
    text = forms.param_summary("default", method, 20, 4, 1, (), **more)
    assert f"{config.trainable_params(576):,}" in text and config.formula in text  # type: ignore[attr-defined]
    spec, _ = forms.spec_from_form(_form(method=method, length=20, rank=4, **more))
    assert spec.method == config


def test_parameter_count_follows_the_formulas(tiny_llama_dir: Path, access: Access) -> None:
    text = forms.param_summary("default", "lamp", 100, 8, 4)
    assert f"{LampConfig(100, 8, 4).trainable_params(576):,}" in text and "**25** prompt tokens" in text
    tiny = forms.param_summary(str(tiny_llama_dir), "prompt-tuning", 20, 8, 1, access.allowed_dirs)
    assert f"{trainable_param_counts(32, 20, 8)['prompt-tuning']:,}" in tiny
    assert "fix the knobs" in forms.param_summary("default", "lamp", 100, 8, 3)
    assert "read when the job loads it" in forms.param_summary("no-such/model-id", "dpt", 100, 8, 1)


def test_the_form_shows_the_cost_estimate(store_env: Path, gradio_tmp: Path, access: Access, tiny_llama_dir: Path,
                                          sentiment_csv: Path) -> None:
    upload = _uploaded(store_env, access, "reviews.csv", sentiment_csv.read_text())
    values = _form(model=str(tiny_llama_dir), source=forms.OWN_DATA, data_file=upload,
                   text_column="review", label_column="verdict", length=8, rank=4, pool=2, batch_size=4)
    text = forms.cost_summary(values, access)
    assert text.startswith("**Cost (") and "peak memory" in text and "MiB" in text and "no earlier job" in text
    assert "fix the form" in forms.cost_summary({**values, "rank": 99}, access)


# ---- uploads ----

def test_an_upload_is_kept_under_lamp_home_and_the_temporary_file_removed(store_env: Path, gradio_tmp: Path,
                                                                          access: Access, sentiment_csv: Path) -> None:
    temp = _upload(store_env, "reviews.csv", sentiment_csv.read_text())
    data = accept_upload(temp, access=access)
    assert not temp.exists() and not temp.parent.exists()
    assert data.path.is_file() and data.path.name == "reviews.csv" and "uploads" in data.path.parts
    assert data.path.parent.name == data.id and len(data.id) == 64  # the client knows it by its sha256 only
    assert data.columns == ["review", "verdict"] and len(data.preview()) == 5 and data.rows == 48
    assert guess_columns(data.columns, data.sample) == ("review", "verdict")
    assert resolve_upload(data.id, owner=access.owner) == data.path
    with pytest.raises(DataError, match="not one of your uploads"):
        resolve_upload(data.id, owner="session:someone-else")
    with pytest.raises(DataError, match="not a file uploaded"):
        accept_upload(sentiment_csv, access=access)  # a path outside Gradio's upload folder is never read
    assert sentiment_csv.is_file()


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "tsv"])
def test_jsonl_parquet_and_tsv_uploads_are_read_like_csv(store_env: Path, gradio_tmp: Path, access: Access,
                                                         tmp_path: Path, fmt: str) -> None:
    import pandas as pd

    frame = pd.DataFrame({"review": [f"a long review text number {i}" for i in range(12)],
                          "verdict": ["good", "bad"] * 6})
    folder = tmp_path / "gradio-upload" / fmt
    folder.mkdir(parents=True)
    temp = folder / f"reviews.{fmt}"
    if fmt == "jsonl":
        frame.to_json(temp, orient="records", lines=True)
    elif fmt == "parquet":
        frame.to_parquet(temp)
    else:
        frame.to_csv(temp, sep="\t", index=False)
    data = accept_upload(temp, access=access)
    assert not temp.exists() and data.columns == ["review", "verdict"] and data.rows == 12
    assert guess_columns(data.columns, data.sample) == ("review", "verdict")


@pytest.mark.parametrize(("name", "text", "message"), [
    ("notes.txt", "hello", "unknown file type '.txt'"),
    ("empty.csv", "", "empty.csv: file is empty"),
    ("big.csv", "a,b\n" + "x,y\n" * 1000, "over the upload limit"),
    ("bad.jsonl", '{"a": 1}\nnot json\n', "bad.jsonl"),
])
def test_a_bad_upload_says_what_is_wrong_and_is_removed(store_env: Path, gradio_tmp: Path, name: str, text: str,
                                                        message: str) -> None:
    from core.tasks.reading import Limits

    temp = _upload(store_env, name, text)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(".", r"\.")):
        accept_upload(temp, access=Access(limits=Limits(max_bytes=2000)))
    assert not temp.exists()


def test_auth_settings() -> None:
    assert parse_auth("ann:pw,bob:a:b") == (("ann", "pw"), ("bob", "a:b"))
    with pytest.raises(ConfigError, match="user:password"):
        parse_auth("ann")


# ---- jobs, compare, playground on real jobs ----

@pytest.fixture()
def finished_jobs(store_env: Path, tiny_llama_dir: Path, sentiment_csv: Path) -> list[int]:
    return _run_two_jobs(tiny_llama_dir, sentiment_csv)


@pytest.fixture()
def finished_jobs_any_store(any_store: Path, tiny_llama_dir: Path, sentiment_csv: Path) -> list[int]:
    return _run_two_jobs(tiny_llama_dir, sentiment_csv)


def _run_two_jobs(tiny_llama_dir: Path, sentiment_csv: Path) -> list[int]:
    """Two jobs (LAMP and prompt tuning) run through the real worker path: claim, training process, results."""
    from dataclasses import replace

    from core.methods import method_config
    from jobs.queue import execute_next
    from jobs.tasks import submit

    lamp = tiny_spec(tiny_llama_dir, sentiment_csv)
    pt = replace(lamp, method=method_config("prompt-tuning", length=8))
    ids = [submit(lamp), submit(pt)]
    while execute_next():
        pass
    for job_id in ids:
        job = read(store.get_job, job_id=job_id)
        assert job is not None and job.status == Status.SUCCEEDED, job and job.error
    return ids


def test_jobs_tab_shows_status_progress_curves_and_downloads(finished_jobs_any_store: list[int]) -> None:
    finished_jobs = finished_jobs_any_store
    frame = monitor.jobs_frame()
    assert list(frame.columns) == monitor.JOB_COLUMNS and sorted(frame["ID"]) == finished_jobs
    row = frame[frame["ID"] == finished_jobs[0]].iloc[0]
    assert row["Status"] == "SUCCEEDED" and row["Progress"] == "6/6 (100%)" and row["Knobs"] == "l=8 r=4 p=2"
    assert row["Result"].startswith("accuracy ")
    details = monitor.job_details(finished_jobs[0])
    assert "Job 1: SUCCEEDED" in details.markdown.replace(f"Job {finished_jobs[0]}", "Job 1")
    # how to call it from code: the API's model id in curl and in Python
    assert f'"model": "job-{finished_jobs[0]}"' in details.markdown and "/v1/classify" in details.markdown
    assert f'model="job-{finished_jobs[0]}"' in details.markdown
    assert (details.can_cancel, details.can_retry, details.can_download) == (False, False, True)
    fig = monitor.curve_figure(finished_jobs[0])
    loss = [t for t in fig.data if t.name == "train loss"]
    assert len(loss) == 1 and list(loss[0].x) == [1, 2, 3, 4, 5, 6]
    assert any(t.name.startswith("val ") for t in fig.data)
    with zipfile.ZipFile(monitor.artifact_zip(finished_jobs[0])) as zf:
        names = zf.namelist()
    assert any(n.endswith("lamp_artifact.json") for n in names) and not any("checkpoint" in n for n in names)
    with zipfile.ZipFile(monitor.peft_zip(finished_jobs[0])) as zf:
        assert any(n.endswith("adapter_config.json") for n in zf.namelist())


def test_a_new_metric_point_redraws_and_a_lone_point_is_drawn_with_its_value(store_env: Path, tiny_llama_dir: Path,
                                                                              sentiment_csv: Path) -> None:
    """The final evaluation changes neither the step nor the status: the poll's signature must still change, and
    the eval panel's one point must be visible (a marker with its value, on a 0-1 axis)."""
    from jobs.db import transact
    from jobs.tasks import submit

    job_id = submit(tiny_spec(tiny_llama_dir, sentiment_csv))
    transact(store.add_metrics, job_id=job_id, attempt=1, points=[store.Point(1, "train", "loss", 2.5)], fenced=False)
    before = monitor.job_details(job_id).signature
    transact(store.add_metrics, job_id=job_id, attempt=1, points=[store.Point(1, "val", "accuracy", 0.625)],
             fenced=False)
    assert monitor.job_details(job_id).signature != before
    fig = monitor.curve_figure(job_id)
    (val,) = [t for t in fig.data if t.name == "val accuracy"]
    assert val.mode == "markers+text" and list(val.text) == ["0.625"]
    assert tuple(fig.layout.yaxis2.range) == (0, 1.05)


def test_cancel_and_retry(store_env: Path, tiny_llama_dir: Path, sentiment_csv: Path) -> None:
    from jobs.tasks import submit

    job_id = submit(tiny_spec(tiny_llama_dir, sentiment_csv))
    assert monitor.job_details(job_id).can_cancel
    assert "CANCELLED" in monitor.cancel_job(job_id)
    assert monitor.job_details(job_id).can_retry
    new_id = monitor.retry_job(job_id)
    job = read(store.get_job, job_id=new_id)
    old = read(store.get_job, job_id=job_id)
    assert job is not None and old is not None and job.status == Status.QUEUED and job.spec == old.spec
    with pytest.raises(ConfigError, match="only a failed, cancelled, pruned or out-of-memory job"):
        monitor.retry_job(new_id)
    with pytest.raises(Exception, match="has not succeeded"):
        monitor.artifact_zip(new_id)


def test_a_failed_job_shows_its_error(store_env: Path, tiny_llama_dir: Path, sentiment_csv: Path) -> None:
    from jobs.queue import execute_next
    from jobs.tasks import submit

    job_id = submit(tiny_spec(tiny_llama_dir / "missing-model", sentiment_csv))
    assert execute_next()
    details = monitor.job_details(job_id)
    assert "FAILED" in details.markdown and "missing-model" in details.error
    assert (details.can_cancel, details.can_retry, details.can_download) == (False, True, False)
    row = monitor.jobs_frame().iloc[0]
    assert row["Status"] == "FAILED" and "missing-model" in row["Result"]


def test_a_job_on_a_file_with_a_stray_empty_cell_says_what_it_skipped(store_env: Path, tiny_llama_dir: Path,
                                                                      sentiment_csv: Path, tmp_path: Path) -> None:
    from jobs.queue import execute_next
    from jobs.tasks import submit

    lines = sentiment_csv.read_text().splitlines()
    lines[7] = ",good"  # row 7: no review
    messy = tmp_path / "messy.csv"
    messy.write_text("\n".join(lines) + "\n")
    job_id = submit(tiny_spec(tiny_llama_dir, messy))
    assert execute_next()
    job = read(store.get_job, job_id=job_id)
    assert job is not None and job.status == Status.SUCCEEDED, job and job.error
    assert job.data_report is not None and job.data_report["skipped"][0]["first"] == ["row 7"]
    assert "Data: messy.csv: 1 of 48 rows skipped (an empty input or label): row 7" in \
        monitor.job_details(job_id).markdown
    assert store.job_summary(job)["data_report"] == job.data_report  # `lamp jobs --json`


def test_compare_table_charts_and_csv(finished_jobs: list[int]) -> None:
    frame = compare.compare_frame([*finished_jobs, 999])
    assert list(frame["job"]) == finished_jobs and list(frame["method"]) == ["lamp", "prompt-tuning"]
    counts = trainable_param_counts(32, 8, 4, 2)
    assert list(frame["trainable_params"]) == [counts["lamp"], counts["prompt-tuning"]]
    assert list(frame["prompt_tokens"]) == [4, 8]
    cost = compare.cost_figure(frame)
    bars = [t for t in cost.data if t.type == "bar"]
    assert len(bars) == 4 and list(bars[0].y) == list(frame["trainable_params"])
    assert list(bars[0].text) == [f"{n:,}" for n in frame["trainable_params"]]  # 2,388, not 2.39e+03
    assert [compare._plain(v) for v in (2388, 678.4, 12.46, 0.43)] == ["2,388", "678", "12.5", "0.43"]
    assert cost.layout.yaxis.type != "log" and tuple(cost.layout.yaxis4.range) == (0, 1.05)
    assert [t.name for t in cost.data if t.showlegend is not False] == ["lamp", "prompt-tuning"]  # every method
    knobs = compare.knob_figure(frame)
    assert {t.name for t in knobs.data} == {"lamp", "prompt-tuning"}
    assert sorted(t.name for t in knobs.data if t.showlegend) == ["lamp", "prompt-tuning"]  # PT has no rank point
    assert "Pick two or more" in compare.empty_figure("Pick two or more succeeded jobs").layout.annotations[0].text
    rows = list(csv.DictReader(io.StringIO(Path(compare.compare_csv(frame)).read_text())))
    assert [int(r["job"]) for r in rows] == finished_jobs


def test_playground_answers_with_each_prompt_beside_the_bare_model(finished_jobs: list[int]) -> None:
    playground._PREDICTORS.clear()
    assert "Loading" in playground.loading_note(finished_jobs) and "first use" in playground.loading_note([1])
    table, fig = playground.ask(finished_jobs, "a wonderful film")
    assert playground.loading_note(finished_jobs) == ""  # loaded now: nothing to warn of
    assert list(table["Prompt"]) == [f"#{finished_jobs[0]} lamp", f"#{finished_jobs[1]} prompt-tuning",
                                     "bare model " + str(playground.predictor_for(finished_jobs[0]).artifact.spec
                                                         .model.name)]  # one task, one model: bare once
    for answer in table["Answer"]:
        assert answer in ("bad", "good")
    scores = [float(s.split()[-1]) for s in table["Label probabilities"].iloc[0].split(", ")]
    assert sum(scores) == pytest.approx(1.0, abs=0.02) and all(len(s.split()[-1]) == 5 for s in
                                                               table["Label probabilities"].iloc[0].split(", "))
    assert [t.name for t in fig.data] == [f"#{finished_jobs[0]} lamp", f"#{finished_jobs[1]} prompt-tuning",
                                          "bare model"]  # the bare model drawn once
    bare_row = table.iloc[-1]
    for job_id, row in zip(finished_jobs, table.iloc[:2].itertuples(index=False), strict=True):  # batched = alone
        predictor = playground.predictor_for(job_id)
        tuned, bare = [predictor.predict([row[4]], use_prompt=use)[0] for use in (True, False)]
        assert [row[1], row[2]] == [tuned.answer, playground._scores(tuned)]
        assert [bare_row.iloc[1], bare_row.iloc[2]] == [bare.answer, playground._scores(bare)]
        delta = tuned.scores[tuned.answer] - bare.scores[tuned.answer]
        assert row[3].startswith(f"{tuned.answer} {delta:+.3f}")
    with pytest.raises(ConfigError, match="type an input"):
        playground.ask(finished_jobs, "  ")
    with pytest.raises(ConfigError, match="at most"):
        playground.ask([1, 2, 3, 4, 5], "x")


def test_the_page_builds_with_its_four_tabs(store_env: Path) -> None:
    from app.interface import build_ui

    ui = build_ui()
    ids = {getattr(block, "elem_id", None) for block in ui.blocks.values()}
    assert {"tab-new", "tab-jobs", "tab-compare", "tab-playground", "launch", "job-curves", "ask"} <= ids


def test_no_raw_exception_reaches_the_page(store_env: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Every plain handler of the page is guarded: an unexpected error is one short line in the page (its type,
    not its text, which may name server paths) and the traceback in the server's log; the handler's signature,
    through which Gradio finds its gr.Request, is kept."""
    import inspect

    import gradio as gr

    from app.components.common import friendly
    from app.interface import build_ui

    ui = build_ui()
    plain = [f.fn for f in ui.fns.values() if f.fn is not None and not inspect.isgeneratorfunction(f.fn)
             and not inspect.iscoroutinefunction(f.fn)]
    assert plain and all(getattr(fn, "_lamp_guarded", False) for fn in plain)

    def handler(request: gr.Request, path: str) -> str:
        raise ImportError("cannot import name 'AutoTokenizer' from 'transformers' (/srv/site-packages/...)")

    guarded = friendly(handler)
    assert list(inspect.signature(guarded).parameters) == ["request", "path"]
    with pytest.raises(gr.Error) as info, caplog.at_level("ERROR", logger="app"):
        guarded(None, "x")  # type: ignore[arg-type]
    assert "ImportError" in info.value.message and "site-packages" not in info.value.message
    assert "AutoTokenizer" in caplog.text  # the whole story is in the log
    with pytest.raises(gr.Error, match="at most"):
        friendly(lambda: (_ for _ in ()).throw(ConfigError("rank: at most 8")))()


def test_only_offered_folders_and_job_ids_can_be_named(tmp_path: Path, access: Access) -> None:
    offered = tmp_path / "offered"
    (offered / "rte").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    mine = Access(owner="user:test", allowed_dirs=(offered.resolve(),))
    spec, _ = forms.spec_from_form(_form(task="rte", data_dir=str(offered / "rte")), mine)
    assert spec.data.data_dir == str((offered / "rte").resolve())
    answers = set()
    for path in (tmp_path / "outside", tmp_path / "missing", offered / ".." / "outside", "/etc"):
        with pytest.raises(forms.FormError) as info:
            forms.spec_from_form(_form(task="rte", data_dir=str(path), model=str(path)), mine)
        assert set(info.value.problems) == {"data_dir", "model"}
        answers.add(info.value.problems["data_dir"].replace(repr(str(path)), "X"))
    assert len(answers) == 1  # the same answer whether the folder exists or not
    (offered / "link").symlink_to(tmp_path / "outside")  # a link inside leads outside: refused too
    with pytest.raises(forms.FormError, match="not a folder this dashboard offers"):
        forms.spec_from_form(_form(task="rte", data_dir=str(offered / "link")), mine)
    with pytest.raises(forms.FormError, match="give the number of a succeeded job"):
        forms.spec_from_form(_form(init_from=str(offered)), mine)
    assert forms.spec_from_form(_form(model="HuggingFaceTB/SmolLM2-135M"), mine)[0].model.name == \
        "HuggingFaceTB/SmolLM2-135M"
