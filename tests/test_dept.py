"""DePT: its counts, its module, and its input offset through every path that embeds an input (training loss,
ranking, generation, mixed batches, artifacts, predict, exports), each checked against a plain one-row forward."""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import pytest
import torch
from torch.testing import assert_close

from core.backbone import Backbone, load_backbone
from core.batching import Codec, collate, embed_inputs
from core.errors import ArtifactError, ConfigError
from core.methods import (
    DeptConfig,
    DeptPrompt,
    build_prompt,
    input_offset,
    method_config,
    prompt_module,
    trainable_param_counts,
)
from core.scoring import generate, left_padded, loss_fn, rank_candidates
from core.serving import Lane, Query, generate_mixed, rank_mixed
from core.spec import DataConfig, ModelConfig, RunSpec, TrainConfig
from core.train import param_groups

TEXTS = ["a short one", "a somewhat longer input sentence with more words in it than the offset covers", "mid text"]
WORDS = ("negative", "positive")
LONG_WORDS = ("no", "yes please")


def test_counts_match_depts_own_defaults() -> None:
    """DePT on T5-Base: m = 60, r = 30, s = 256 is vanilla prompt tuning's 76,800 (l = 100, d = 768)."""
    assert DeptConfig().trainable_params(768) == 76_800 == 100 * 768
    assert DeptConfig().trainable_params(576) == 60 * 576 + 256 * 30 + 30 * 576 == 59_520
    assert trainable_param_counts(576, 20, rank=4)["dept"] == 20 * 576 + 256 * 4 + 4 * 576


@pytest.mark.parametrize(("knobs", "needle"), [({"positions": 0}, "positions=0"), ({"rank": 0}, "rank=0"),
                                               ({"rank": 9, "positions": 8}, "rank=9 > positions=8"),
                                               ({"pair_lr": 0.0}, "pair_lr=0.0"), ({"length": 0}, "length=0")])
def test_bad_knobs_name_the_value_and_fix(knobs: dict[str, float], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        method_config("dept", **knobs)


def _module(hidden: int = 32, **knobs: int) -> DeptPrompt:
    config = DeptConfig(**{"length": 5, "rank": 3, "positions": 6, **knobs})
    table = torch.randn(400, hidden, generator=torch.Generator().manual_seed(0)) * 0.2
    module, ids = build_prompt(config, table, list(range(10, 300)), torch.Generator().manual_seed(1))
    assert len(ids) == config.length and module().shape == (config.length, hidden)
    return cast(DeptPrompt, module)


def test_module_trains_the_formulas_parameters_and_starts_as_prompt_tuning() -> None:
    module = _module()
    counted = sum(p.numel() for p in module.parameters() if p.requires_grad)
    assert counted == module.config.trainable_params(32) == 5 * 32 + 6 * 3 + 3 * 32
    offset = input_offset(module)
    assert offset is not None and offset.shape == (6, 32) and offset.abs().max() == 0  # B starts at zero
    with torch.no_grad():
        module.b.normal_(generator=torch.Generator().manual_seed(2))
    assert_close(module.offset().double(), module.a.double() @ module.b.double(), rtol=1e-6, atol=1e-7)
    module.offset().pow(2).sum().backward()
    assert module.a.grad is not None and module.b.grad is not None and module.a.grad.abs().sum() > 0
    again = prompt_module(module.config, {k: v.clone() for k, v in module.state_dict().items()})
    assert_close(cast(DeptPrompt, again).offset(), module.offset())
    with pytest.raises(ConfigError, match="hidden size 32"):
        _module(rank=40, positions=50)


def test_pair_rate_multiplies_a_and_b_in_both_scalings() -> None:
    module = _module()
    module = cast(DeptPrompt, prompt_module(DeptConfig(length=5, rank=3, positions=6, pair_lr=0.25),
                                            module.state_dict()))
    start = {k: v.clone() for k, v in module.state_dict().items()}
    absolute = {g["name"]: g["lr"] for g in param_groups(module, 0.1, "absolute", start, fallback_rms=0.5)}
    assert absolute == pytest.approx({"prompt": 0.1, "a": 0.025, "b": 0.025})
    relative = {g["name"]: g["lr"] for g in param_groups(module, 0.1, "relative", start, fallback_rms=0.5)}
    rms = {k: v.pow(2).mean().sqrt().item() for k, v in start.items()}
    assert relative == pytest.approx({"prompt": 0.1 * rms["prompt"], "a": 0.025 * rms["a"], "b": 0.025 * 0.5})


# ---- the offset in every forward, against one row run on its own ----

@pytest.fixture(scope="module", params=["llama", "t5"])
def backbone(request: pytest.FixtureRequest) -> Backbone:
    return load_backbone(ModelConfig(str(request.getfixturevalue(f"tiny_{request.param}_dir"))), torch.device("cpu"))


def _prompt_and_offset(backbone: Backbone, seed: int = 0, tokens: int = 4, span: int = 6
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    d = backbone.hidden_size
    return torch.randn(tokens, d, generator=g) * 0.5, torch.randn(span, d, generator=g) * 0.5


def _one_row_score(backbone: Backbone, prompt: torch.Tensor, offset: torch.Tensor, source: list[int],
                   target: list[int]) -> float:
    """log p(target | [P; E(source) + O]) from one unpadded row: the offset added by hand, no batching code."""
    emb = backbone.input_embeddings
    with torch.no_grad():
        src = emb(torch.tensor([source]))[0].clone()
        n = min(len(source), offset.shape[0])
        src[:n] += offset[:n]
        if backbone.family == "seq2seq":
            x = torch.cat([prompt, src])[None]
            logits = backbone.model(inputs_embeds=x, labels=torch.tensor([target])).logits[0]
            return torch.log_softmax(logits.float(), -1)[torch.arange(len(target)), target].sum().item()
        x = torch.cat([prompt, src, emb(torch.tensor(target))])[None]
        logits = backbone.model(inputs_embeds=x).logits[0, -len(target) - 1 : -1]
        return torch.log_softmax(logits.float(), -1)[torch.arange(len(target)), target].sum().item()


@pytest.mark.parametrize("words", [WORDS, LONG_WORDS], ids=["one-token", "teacher-forced"])
def test_ranking_with_the_offset_equals_one_row_alone(backbone: Backbone, words: tuple[str, ...]) -> None:
    codec = Codec.for_backbone(backbone)
    prompt, offset = _prompt_and_offset(backbone)
    got = rank_candidates(backbone, prompt, codec, TEXTS, [list(words)] * len(TEXTS), offset=offset)
    want = [[_one_row_score(backbone, prompt, offset, codec.source(t, codec.max_length - len(codec.target(w, False))),
                            codec.target(w, eos=False)) for w in words] for t in TEXTS]
    assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-4, atol=1e-4)
    plain = rank_candidates(backbone, prompt, codec, TEXTS, [list(words)] * len(TEXTS))
    assert (torch.tensor(got) - torch.tensor(plain)).abs().max() > 1e-3  # the offset is really there


def test_training_loss_with_the_offset_equals_one_row_alone(backbone: Backbone) -> None:
    codec = Codec.for_backbone(backbone)
    prompt, offset = _prompt_and_offset(backbone, seed=3)
    items = [codec.encode(t, w) for t, w in zip(TEXTS, ("positive", "negative", "positive"), strict=True)]
    batch = collate(items, backbone.family, backbone.tokenizer.pad_token_id, backbone.device)  # padded, CPU cache
    loss = loss_fn(backbone, prompt, batch, offset)
    total = sum(-_one_row_score(backbone, prompt, offset, e.source, e.target) for e in items)
    assert loss.item() == pytest.approx(total / sum(len(e.target) for e in items), rel=1e-4)


def test_embed_inputs_counts_each_rows_own_tokens(tiny_llama_dir: Path) -> None:
    """Right-padded training rows and left-padded generation rows get offset[t] on their t-th input token;
    answer tokens and padding get nothing."""
    backbone = load_backbone(ModelConfig(str(tiny_llama_dir)), torch.device("cpu"))
    codec = Codec.for_backbone(backbone)
    _, offset = _prompt_and_offset(backbone)
    items = [codec.encode(t, "positive") for t in TEXTS]
    for batch in (collate(items, "causal", 0, backbone.device), left_padded(backbone, [e.source for e in items])):
        diff = embed_inputs(backbone, batch, offset) - backbone.input_embeddings(batch.input_ids)
        for row, e in enumerate(items):
            cols = batch.attention_mask[row].nonzero()[:, 0]
            start = int(cols[0])
            n = min(len(e.source), offset.shape[0])
            assert_close(diff[row, start : start + n], offset[:n])
            assert diff[row, start + n :].abs().sum() == 0 and diff[row, :start].abs().sum() == 0


def _greedy_alone(backbone: Backbone, prompt: torch.Tensor, offset: torch.Tensor, source: list[int], new: int) -> str:
    """Greedy decoding of one row with a full forward per token (no cache, no padding): the reference."""
    emb, tok = backbone.input_embeddings, backbone.tokenizer
    with torch.no_grad():
        src = emb(torch.tensor([source]))[0].clone()
        n = min(len(source), offset.shape[0])
        src[:n] += offset[:n]
        if backbone.family == "seq2seq":
            ids = backbone.model.generate(inputs_embeds=torch.cat([prompt, src])[None], max_new_tokens=new,
                                          do_sample=False, num_beams=1)[0]
            return str(tok.decode(ids, skip_special_tokens=True)).strip()
        out: list[int] = []
        for _ in range(new):
            x = torch.cat([prompt, src, emb(torch.tensor(out, dtype=torch.long))])[None]
            nxt = int(backbone.model(inputs_embeds=x).logits[0, -1].argmax())
            out.append(nxt)
            if nxt == tok.eos_token_id:
                break
        return str(tok.decode(out, skip_special_tokens=True)).strip()


def test_generation_with_the_offset_equals_one_row_alone(backbone: Backbone) -> None:
    codec = Codec.for_backbone(backbone)
    prompt, offset = _prompt_and_offset(backbone, seed=4)
    got = generate(backbone, prompt, codec, TEXTS, max_new_tokens=5, offset=offset)
    assert got == [_greedy_alone(backbone, prompt, offset, codec.source(t), 5) for t in TEXTS]


def test_mixed_batches_carry_each_lanes_offset(backbone: Backbone) -> None:
    """DePT lanes (offsets of two spans), a plain prompt and the bare model in one batch: each row as alone."""
    codec = Codec.for_backbone(backbone)
    (p0, o0), (p1, o1) = _prompt_and_offset(backbone, 5), _prompt_and_offset(backbone, 6, tokens=7, span=3)
    plain, _ = _prompt_and_offset(backbone, 7, tokens=2)
    lanes = [Lane(p0, codec, offset=o0), Lane(plain, codec), Lane(p1, codec, offset=o1), Lane(None, codec)]
    queries = [Query(k, t, LONG_WORDS if k == 2 else WORDS) for t in TEXTS for k in range(len(lanes))]
    ranked = rank_mixed(backbone, lanes, queries, batch_size=5)
    texts = generate_mixed(backbone, lanes, queries, max_new_tokens=4, batch_size=5)
    for k, lane in enumerate(lanes):
        rows = [i for i, q in enumerate(queries) if q.lane == k]
        sources = [queries[i].source for i in rows]
        alone = rank_candidates(backbone, lane.prompt, codec, sources, [list(queries[i].candidates) for i in rows],
                                offset=lane.offset)
        assert_close(torch.tensor([ranked[i] for i in rows]), torch.tensor(alone), rtol=1e-4, atol=1e-4)
        assert [texts[i] for i in rows] == generate(backbone, lane.prompt, codec, sources, max_new_tokens=4,
                                                    offset=lane.offset)


# ---- a trained DePT prompt: artifact, predict, the API's mixed path, exports ----

@pytest.fixture(scope="module")
def trained(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from core.train import fit

    root = tmp_path_factory.mktemp("dept")
    csv = root / "reviews.csv"
    rows = [("a wonderful warm film", "good"), ("dull and far too long", "bad"), ("i loved every minute", "good"),
            ("a waste of an evening", "bad")] * 6
    csv.write_text("review,verdict\n" + "".join(f"{t},{v}\n" for t, v in rows))
    spec = RunSpec(model=ModelConfig(str(tiny_llama_dir)), method=DeptConfig(length=4, rank=2, positions=8),
                   data=DataConfig(task=None, train_file=str(csv), text_column="review", label_column="verdict"),
                   train=TrainConfig(steps=4, batch_size=4, eval_every=2, lr=0.3, device="cpu", max_length=64))
    return Path(fit(spec, root / "run").artifact)


def test_artifact_keeps_the_offset_and_predict_reads_it(trained: Path) -> None:
    from core.artifact import load_artifact
    from core.inference import Ask, MultiPredictor, Predictor

    artifact = load_artifact(trained)
    offset = artifact.offset()
    module = cast(DeptPrompt, prompt_module(artifact.method, artifact.params()))
    assert offset is not None and offset.shape == (8, 32) and offset.abs().max() > 0  # B moved off zero
    assert_close(offset, module.offset().detach())
    from core.inspection import format_text, inspect_artifact

    inspection = inspect_artifact(trained)  # lamp inspect says how large the offset grew
    assert inspection.offset_norm == pytest.approx(float(offset.norm(dim=-1).mean()))
    assert "input offset A B: mean per-position norm" in format_text(inspection)
    predictor = Predictor.load(trained, device="cpu")
    sources = ["review: i loved it", "review: a dull film"]
    got = predictor.predict(sources, max_new_tokens=3)
    words = list(artifact.label_words or ())
    want = rank_candidates(predictor.backbone, artifact.prompt(), predictor.codec, sources, [words] * 2,
                           offset=offset)
    for p, row in zip(got, want, strict=True):
        top = max(range(len(words)), key=row.__getitem__)
        assert p.answer == words[top]
    multi = MultiPredictor([predictor])  # the server's path: mixed batches with the bare model beside it
    asks = [Ask(0, s, bare) for s in sources for bare in (False, True)]
    for ask, answer in zip(asks, multi.answer(asks, max_new_tokens=3), strict=True):
        alone = predictor.predict([ask.source], use_prompt=not ask.bare, max_new_tokens=3)[0]
        assert (answer.answer, answer.generated) == (alone.answer, alone.generated)
        assert_close(torch.tensor(list(answer.scores.values())), torch.tensor(list(alone.scores.values())),
                     rtol=1e-4, atol=1e-5)


def test_peft_export_is_refused_and_prompt_embeds_carry_the_offset(trained: Path, tmp_path: Path) -> None:
    from core.artifact import load_artifact
    from core.export import export_peft, export_prompt_embeds
    from core.inference import Predictor, render_source
    from core.prompt_embeds import ExportedPrompt

    with pytest.raises(ArtifactError, match="dept prompt also changes the input's own token embeddings"):
        export_peft(trained, tmp_path / "peft")
    exported = ExportedPrompt.load(export_prompt_embeds(trained, tmp_path / "embeds"))
    assert "offset" in json.loads((tmp_path / "embeds" / "prompt_embeds.json").read_text())["layout"]
    predictor = Predictor.load(trained, device="cpu")
    b = predictor.backbone
    embeds = exported.request(b.tokenizer, b.input_embeddings, "i loved it")
    ids = predictor.codec.source(render_source(predictor.template, "i loved it"))  # the template, then the cue
    batch = left_padded(b, [ids])
    with torch.no_grad():
        want = torch.cat([load_artifact(trained).prompt(), embed_inputs(b, batch, predictor.offset)[0]])
    assert_close(embeds, want)
