"""Uploads as the New job form handles them: the column guess, the same column refused as text and label, and the
quota each owner keeps (least recently used uploads go first; not those a queued job reads)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from test_app_handlers import _form, _upload
from test_jobs_support import worker_store

from app import forms
from app.access import Access
from app.settings import Quota
from app.uploads import accept_upload, guess_columns, resolve_upload
from core.errors import DataError, StorageError


@pytest.fixture()
def store_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gradio_tmp: Path) -> Iterator[Path]:
    for _url in worker_store(tmp_path, monkeypatch, "sqlite"):
        yield tmp_path


@pytest.mark.parametrize(("rows", "expected"), [
    # Two rows: each column has two distinct values; the short one is the label.
    ([("a joy to watch", "good"), ("a dull mess", "bad")], ("review", "verdict")),
    # A small file whose reviews repeat as often as its labels do.
    ([("fine", "pos"), ("awful", "neg"), ("fine", "pos"), ("awful", "neg")], ("review", "verdict")),
    # An id column (all distinct) is never the label; the label column sits first.
    ([("1", "yes", "is it good?"), ("2", "no", "is it bad?"), ("3", "yes", "ok?"), ("4", "no", "no?")],
     ("question", "verdict")),
])
def test_the_label_guess_prefers_few_distinct_short_values(rows: list[tuple[str, ...]],
                                                           expected: tuple[str, str]) -> None:
    columns = ["review", "verdict"] if len(rows[0]) == 2 else ["id", "verdict", "question"]
    sample = [dict(zip(columns, row, strict=True)) for row in rows]
    assert guess_columns(columns, sample) == expected


def test_the_same_column_as_text_and_label_is_refused(store_env: Path, access: Access, sentiment_csv: Path) -> None:
    upload = accept_upload(_upload(store_env, "reviews.csv", sentiment_csv.read_text()), access=access).id
    with pytest.raises(forms.FormError) as info:
        forms.spec_from_form(_form(source=forms.OWN_DATA, data_file=upload, text_column="review",
                                   label_column="review"), access)
    assert "it is also the text column" in info.value.problems["label_column"]
    with pytest.raises(forms.FormError) as info:
        forms.spec_from_form(_form(source=forms.OWN_DATA, data_file=upload, template="{review} {verdict}",
                                   label_column="verdict"), access)
    assert "the template '{review} {verdict}' uses it" in info.value.problems["label_column"]


def _csv(n: int, width: int = 200) -> str:
    return "text,label\n" + "".join(f"{i:05d} {'x' * width},{'ab'[i % 2]}\n" for i in range(n))


def test_each_owner_keeps_a_quota_least_recently_used_first(store_env: Path, access: Access) -> None:
    from jobs.tasks import submit

    quota = Quota(owner_bytes=5100, total_bytes=10**9)  # two of these files fit, not three
    first = accept_upload(_upload(store_env, "one.csv", _csv(10)), access=access, quota=quota)
    second = accept_upload(_upload(store_env, "two.csv", _csv(11)), access=access, quota=quota)
    third = accept_upload(_upload(store_env, "three.csv", _csv(12)), access=access, quota=quota)
    with pytest.raises(DataError, match=r"not one of your uploads|was removed"):
        resolve_upload(first.id, owner=access.owner)  # the oldest made room
    assert not first.path.exists() and second.path.exists() and third.path.exists()
    spec, _ = forms.spec_from_form(_form(source=forms.OWN_DATA, data_file=second.id, text_column="text",
                                         label_column="label", steps=1), access)
    submit(spec)  # queued: its file stays, whatever the quota
    resolve_upload(third.id, owner=access.owner)  # now used more recently than the second
    fourth = accept_upload(_upload(store_env, "four.csv", _csv(13)), access=access, quota=quota)
    assert second.path.exists() and not third.path.exists() and fourth.path.exists()
    with pytest.raises(DataError, match="more than the 0 MiB one user may keep"):
        accept_upload(_upload(store_env, "big.csv", _csv(40)), access=access, quota=quota)
    other = Access(owner="user:other")
    with pytest.raises(StorageError, match=r"the server's uploads take .* `lamp gc`"):
        accept_upload(_upload(store_env, "five.csv", _csv(14)), access=other, quota=Quota(10**6, 1))


def test_the_preview_says_which_rows_the_job_will_skip_and_strict_refuses_them(store_env: Path, access: Access,
                                                                              sentiment_csv: Path) -> None:
    lines = sentiment_csv.read_text().splitlines()
    lines[12] = '"a moving story 0",'  # row 12: no verdict
    upload = accept_upload(_upload(store_env, "messy.csv", "\n".join(lines) + "\n"), access=access).id
    form = _form(source=forms.OWN_DATA, data_file=upload, text_column="review", label_column="verdict")
    note = forms.upload_note(form, access)
    assert "**1 of 48 rows will be skipped** (an empty input or label): row 12" in note and "Strict" in note
    spec, _ = forms.spec_from_form(form, access)
    assert spec.data.strict is False
    strict = {**form, "strict": True}
    assert forms.upload_note(strict, access).startswith("**The job would refuse this file:** messy.csv: 1 problem")
    with pytest.raises(forms.FormError) as info:
        forms.spec_from_form(strict, access)
    assert set(info.value.problems) == {"label_column"}
    assert "row 12: empty label in column 'verdict'" in info.value.problems["label_column"]
    assert "strict" in info.value.problems["label_column"] and str(store_env) not in info.value.problems["label_column"]
