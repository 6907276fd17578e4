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


def test_prompt_table_pads_shorter_prompts_on_the_left(tiny_llama_dir: Path) -> None:
    """The CPU route really pads: a 5-token prompt sits in a 20-wide block beside the 20-token one."""
    backbone = load_backbone(ModelConfig(str(tiny_llama_dir)), torch.device("cpu"))
    table = serving.PromptTable(backbone, _lanes(backbone))
    lanes = torch.tensor([0, 1, 2])
    block, mask = table.block(lanes, table.width(lanes))
    assert block.shape[1] == 20 and mask.sum(dim=1).tolist() == [5, 20, 0]
    cache = table.cache(lanes, 20)
    assert cache is not None and cache.get_seq_length() == 20
