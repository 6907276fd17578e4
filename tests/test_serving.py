"""Several prompts in one batch: every row's scores and answers equal those of its prompt on its own."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from core import serving
from core.backbone import Backbone, load_backbone
from core.batching import Codec
from core.scoring import generate, rank_candidates
from core.serving import Lane, Query, generate_mixed, rank_mixed
from core.spec import ModelConfig

TEXTS = ["a short one", "a somewhat longer input sentence with more words in it", "mid length text here",
         "four"]
WORDS = ("negative", "positive")  # one token each: the first-token route
LONG_WORDS = ("no", "yes please", "not at all")  # several tokens: teacher forcing


@pytest.fixture(scope="module", params=["llama", "gpt2", "t5"])
def backbone(request: pytest.FixtureRequest) -> Backbone:
    return load_backbone(ModelConfig(str(request.getfixturevalue(f"tiny_{request.param}_dir"))), torch.device("cpu"))


@pytest.fixture(params=["cpu-cache", "plain"])
def route(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The CPU route (prompts' keys and values gathered from a cache) and the plain one CUDA takes."""
    if request.param == "plain":
        monkeypatch.setattr(serving, "use_prompt_cache", lambda backbone: False)
    return str(request.param)


def _lanes(backbone: Backbone) -> list[Lane]:
    """Prompts of 5 and 20 tokens, the bare model, and a lane with its own answer cue and length."""
    g = torch.Generator().manual_seed(0)
    d = backbone.hidden_size
    codec = Codec.for_backbone(backbone)
    other = Codec.for_backbone(backbone, "label", 64)
    return [Lane(torch.randn(5, d, generator=g) * 0.5, codec), Lane(torch.randn(20, d, generator=g) * 0.5, codec),
            Lane(None, codec), Lane(torch.randn(8, d, generator=g) * 0.5, other)]


def _queries(lanes: list[Lane]) -> list[Query]:
    """Every text for every lane, interleaved so that each batch mixes prompts; lane 1 ranks longer answers."""
    return [Query(k, t, LONG_WORDS if k == 1 else WORDS) for t in TEXTS for k in range(len(lanes))]


def test_mixed_scores_equal_each_prompt_alone(backbone: Backbone, route: str) -> None:
    lanes = _lanes(backbone)
    queries = _queries(lanes)
    mixed = rank_mixed(backbone, lanes, queries, batch_size=6)
    for k, lane in enumerate(lanes):
        rows = [i for i, q in enumerate(queries) if q.lane == k]
        words = [list(queries[i].candidates) for i in rows]
        alone = rank_candidates(backbone, lane.prompt, lane.codec, [queries[i].source for i in rows], words)
        assert_close(torch.tensor([mixed[i] for i in rows]), torch.tensor(alone), rtol=1e-4, atol=1e-4)
        assert all(len(mixed[i]) == len(queries[i].candidates) for i in rows)


def test_mixed_generation_equals_each_prompt_alone(backbone: Backbone, route: str) -> None:
    lanes = _lanes(backbone)
    queries = _queries(lanes)
    mixed = generate_mixed(backbone, lanes, queries, max_new_tokens=6, batch_size=5)
    for k, lane in enumerate(lanes):
        rows = [i for i, q in enumerate(queries) if q.lane == k]
        alone = generate(backbone, lane.prompt, lane.codec, [queries[i].source for i in rows], max_new_tokens=6)
        assert [mixed[i] for i in rows] == alone


def test_one_row_and_only_bare_rows(backbone: Backbone) -> None:
    codec = Codec.for_backbone(backbone)
    bare = [Lane(None, codec)]
    queries = [Query(0, t, WORDS) for t in TEXTS]
    assert_close(torch.tensor(rank_mixed(backbone, bare, queries)),
                 torch.tensor(rank_candidates(backbone, None, codec, TEXTS, [list(WORDS)] * len(TEXTS))))
    lanes = _lanes(backbone)
    one = rank_mixed(backbone, lanes, [Query(1, TEXTS[0], WORDS)])
    assert_close(torch.tensor(one), torch.tensor(rank_candidates(backbone, lanes[1].prompt, codec, TEXTS[:1],
                                                                 [list(WORDS)])), rtol=1e-4, atol=1e-4)
    assert rank_mixed(backbone, lanes, [Query(0, "x")]) == [[]]  # nothing to rank


def test_one_cached_prompt_reads_its_own_keys_and_values(backbone: Backbone) -> None:
    """One lane with a key (the API's usual call): batch 1 and a batch of rows read the cached tensors themselves,
    answer as the prompt alone, and leave the cache as it was for the next call."""
    lane = _lanes(backbone)[1]
    keyed, cache = Lane(lane.prompt, lane.codec, key="job-1"), serving.PromptKV()
    words = [list(WORDS)] * len(TEXTS)
    for sources in (TEXTS[:1], TEXTS):
        alone = rank_candidates(backbone, lane.prompt, lane.codec, sources, words[: len(sources)])
        queries = [Query(0, t, WORDS) for t in sources]
        for _ in range(2):  # computed, then read back from the cache
            assert_close(torch.tensor(rank_mixed(backbone, [keyed], queries, kv_cache=cache)), torch.tensor(alone),
                         rtol=1e-4, atol=1e-4)
        answers = generate_mixed(backbone, [keyed], [Query(0, t) for t in sources], max_new_tokens=4,
                                 kv_cache=cache)
        assert answers == generate(backbone, lane.prompt, lane.codec, sources, max_new_tokens=4)
    if backbone.family == "seq2seq":
        return  # no keys and values to keep: the encoder reads the prompt itself
    stored = cache.get("job-1")
    assert stored is not None and cache.misses == 1
    kept = [(k.clone(), v.clone()) for k, v in stored]
    table = serving.PromptTable(backbone, [keyed], cache)
    assert table.kv is not None and all(a[0] is b[0] for a, b in zip(table.kv, stored, strict=True))  # no copy
    rank_mixed(backbone, [keyed], [Query(0, t, WORDS) for t in TEXTS], kv_cache=cache)
    for (k, v), (k0, v0) in zip(stored, kept, strict=True):
        assert torch.equal(k, k0) and torch.equal(v, v0)


def test_prompt_table_pads_shorter_prompts_on_the_left(tiny_llama_dir: Path) -> None:
    """The CPU route really pads: a 5-token prompt sits in a 20-wide block beside the 20-token one."""
    backbone = load_backbone(ModelConfig(str(tiny_llama_dir)), torch.device("cpu"))
    table = serving.PromptTable(backbone, _lanes(backbone))
    lanes = torch.tensor([0, 1, 2])
    block, mask = table.block(lanes, table.width(lanes))
    assert block.shape[1] == 20 and mask.sum(dim=1).tolist() == [5, 20, 0]
    cache = table.cache(lanes, 20)
    assert cache is not None and cache.get_seq_length() == 20


# ---- several artifacts: MultiPredictor and `lamp predict` ----

def _artifact(out: Path, model_dir: Path, tokens: int, words: list[str] | None, cue: str = "answer",
              seed: int = 0) -> Path:
    """A hand-made artifact: a random prompt of `tokens` vectors on a tiny model, with its task's words and cue."""
    from core.artifact import save_artifact
    from core.methods import PromptTuningConfig
    from core.spec import RunSpec, TrainConfig, spec_to_dict

    spec = RunSpec(model=ModelConfig(str(model_dir)), method=PromptTuningConfig(length=tokens),
                   train=TrainConfig(max_length=64))
    prompt = torch.randn(tokens, 32, generator=torch.Generator().manual_seed(seed)) * 0.5
    task = {"name": "t", "label_words": words, "template": "review: {text}", "answer_cue": cue, "metrics": []}
    save_artifact(out, {"spec": spec_to_dict(spec), "task": task}, {"prompt": prompt}, {"prompt": prompt}, prompt)
    return out


@pytest.fixture(scope="module")
def artifacts(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Prompts of 5 and 20 tokens with different label words, and a generation task with its own answer cue."""
    root = tmp_path_factory.mktemp("artifacts")
    return [_artifact(root / "short", tiny_llama_dir, 5, ["bad", "good"]),
            _artifact(root / "long", tiny_llama_dir, 20, ["no", "yes please"], seed=1),
            _artifact(root / "free", tiny_llama_dir, 8, None, cue="reply", seed=2)]


def test_several_artifacts_answer_as_each_alone(artifacts: list[Path]) -> None:
    from core.inference import Ask, MultiPredictor, Predictor

    multi = MultiPredictor.load(artifacts, device="cpu")
    alone = [Predictor.load(p, device="cpu") for p in artifacts]
    assert all(p.backbone is multi.backbone for p in alone)  # one cached backbone for every prompt
    asks = [Ask(k, f"review: {t}", bare) for t in TEXTS for k in range(len(artifacts)) for bare in (False, True)]
    for sequential in (False, True):
        got = multi.answer(asks, sequential=sequential, max_new_tokens=5)
        for ask, answer in zip(asks, got, strict=True):
            want = alone[ask.prompt].predict([ask.source], use_prompt=not ask.bare, max_new_tokens=5)[0]
            assert (answer.source, answer.answer, answer.generated) == (want.source, want.answer, want.generated)
            assert list(answer.scores) == list(want.scores)
            assert_close(torch.tensor(list(answer.scores.values())), torch.tensor(list(want.scores.values())),
                         rtol=1e-4, atol=1e-5)


def test_artifacts_on_different_backbones_are_refused_by_name(artifacts: list[Path], tiny_gpt2_dir: Path,
                                                              tmp_path: Path) -> None:
    from core.errors import ConfigError
    from core.inference import MultiPredictor

    other = _artifact(tmp_path / "gpt2", tiny_gpt2_dir, 5, ["bad", "good"])
    with pytest.raises(ConfigError, match="different backbones") as exc:
        MultiPredictor.load([artifacts[0], other], device="cpu")
    assert str(artifacts[0]) in str(exc.value) and str(other) in str(exc.value)
    assert MultiPredictor.load([artifacts[0], other], device="cpu", model=str(tiny_gpt2_dir)).predictors


def _predict(*args: str) -> list[str]:
    import contextlib
    import io

    from lamp.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["predict", *args, "--device", "cpu"]) == 0
    return out.getvalue().strip().splitlines()


def test_lamp_predict_with_several_artifacts(artifacts: list[Path], tmp_path: Path) -> None:
    import json

    inputs = tmp_path / "inputs.txt"
    inputs.write_text("a joy to watch\nboring and long\n")
    flags = [x for p in artifacts for x in ("--artifact", str(p))] + ["--text", "great film", "--input", str(inputs)]
    batched = [json.loads(line) for line in _predict(*flags, "--json")]
    sequential = [json.loads(line) for line in _predict(*flags, "--json", "--sequential")]
    assert [r["input"] for r in batched] == ["great film", "a joy to watch", "boring and long"]
    assert [e["input"] for e in batched[0]["answers"]] == ["review: great film"] * 3  # each artifact's template
    for b, s in zip(batched, sequential, strict=True):
        assert [e["artifact"] for e in b["answers"]] == [str(p) for p in artifacts]
        assert [e["answer"] for e in b["answers"]] == [e["answer"] for e in s["answers"]]
        assert set(b["answers"][0]["scores"]) == {"bad", "good"} and set(b["answers"][1]["scores"]) == {
            "no", "yes please"} and b["answers"][2]["scores"] == {}
    table = _predict(*flags)
    assert table[0].split("\t") == ["input", "short", "long", "free"] and len(table) == 4
    single = [json.loads(line) for line in _predict("--artifact", str(artifacts[0]), "--text", "great film", "--json")]
    assert single[0]["answer"] == batched[0]["answers"][0]["answer"] and set(single[0]) == {
        "input", "answer", "generated", "scores"}  # one artifact: the output it always had


def test_cached_routes_use_this_transformers_cache_name(backbone: Backbone, caplog: pytest.LogCaptureFixture) -> None:
    """The cache goes by the name this transformers gives it (`cache` since the rename): no deprecation warning on
    the cached ranking, mixed generation and greedy decoding, which pass a cache and read one back."""
    import logging as std_logging

    from transformers.utils import logging

    std_logging.Logger.warning_once.cache_clear()  # type: ignore[attr-defined]  # warn again if anything does
    logging.enable_propagation()
    lanes = _lanes(backbone)
    with caplog.at_level(std_logging.WARNING, logger="transformers"):
        rank_mixed(backbone, lanes, _queries(lanes), batch_size=6, kv_cache=serving.PromptKV())
        generate_mixed(backbone, lanes, [Query(k, TEXTS[0]) for k in range(len(lanes))], max_new_tokens=3)
        generate(backbone, lanes[0].prompt, lanes[0].codec, TEXTS[:2], max_new_tokens=3)
    logging.disable_propagation()
    assert not [r for r in caplog.records if "deprecated" in r.getMessage()]
