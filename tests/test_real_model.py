"""The real offline models (SmolLM2-135M-Instruct, Gemma 3 270M) on the real offline data.

Run alone with `bash scripts/test.sh -m real_model`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core.backbone import load_backbone
from core.batching import Codec, collate
from core.methods import build_prompt, method_config, prompt_module
from core.scoring import loss_fn
from core.spec import DataConfig, ModelConfig, RunSpec, TrainConfig
from core.tasks import load_builtin_task
from core.train import fit

pytestmark = pytest.mark.real_model


@pytest.mark.parametrize("method", ["lamp", "prompt-tuning"])
def test_a_few_steps_lower_the_loss_on_held_out_reviews(method: str, default_dir: Path, tmp_path: Path) -> None:
    knobs = {"length": 100, "rank": 8, "pool": 4} if method == "lamp" else {"length": 20}
    spec = RunSpec(model=ModelConfig("default"), method=method_config(method, **knobs),
                   data=DataConfig(task="rotten_tomatoes", max_eval_examples=16),
                   train=TrainConfig(steps=8, batch_size=8, eval_every=8, device="cpu", final_eval=False))
    result = fit(spec, tmp_path)
    assert result.steps == 8 and result.trainable_params == spec.method.trainable_params(576)

    backbone = load_backbone(spec.model, torch.device("cpu"))
    task = load_builtin_task("rotten_tomatoes")
    codec = Codec.for_backbone(backbone, task.answer_cue, 256)
    batch = collate([codec.encode(e.source, e.target) for e in task.validation[:24]], "causal",
                    backbone.tokenizer.pad_token_id, backbone.device)
    module, _ = build_prompt(spec.method, backbone.embedding_table(), list(range(252, 5252)), torch.Generator())
    module.load_state_dict(load_file(f"{result.artifact}/init_params.safetensors"))
    with torch.no_grad():
        before = loss_fn(backbone, module(), batch).item()
        after = loss_fn(backbone, load_file(f"{result.artifact}/prompt.safetensors")["prompt"], batch).item()
    assert after < before, (before, after)


def test_zero_shot_template_is_sane(default_dir: Path) -> None:
    """The default model reads the task's answer cue: bare-model ranking beats chance clearly on 64 reviews."""
    from core.evaluate import evaluate

    backbone = load_backbone(ModelConfig("default"), torch.device("cpu"))
    task = load_builtin_task("rotten_tomatoes")
    codec = Codec.for_backbone(backbone, task.answer_cue, 256)
    metrics, scoring = evaluate(backbone, None, codec, task, task.test[:64], generate=False)
    assert scoring == {"accuracy": "rank"}
    assert metrics["accuracy"] > 0.65


@pytest.mark.parametrize("model", ["default", "gemma3-270m"])
def test_the_default_recipe_lowers_the_loss_on_both_families(model: str, default_dir: Path, gemma_dir: Path,
                                                             tmp_path: Path) -> None:
    """LAMP with every setting at its default (the recipe of "Choosing defaults") trains on both offline families:
    a few steps lower the loss on held-out statements of the second offline task."""
    spec = RunSpec(model=ModelConfig(model), data=DataConfig(task="presidential_debates", max_eval_examples=8),
                   train=TrainConfig(steps=6, batch_size=8, eval_every=6, device="cpu", final_eval=False,
                                     max_length=96))
    result = fit(spec, tmp_path)
    backbone = load_backbone(spec.model, torch.device("cpu"))
    task = load_builtin_task("presidential_debates")
    codec = Codec.for_backbone(backbone, task.answer_cue, 96)
    batch = collate([codec.encode(e.source, e.target) for e in task.validation[:24]], "causal",
                    backbone.tokenizer.pad_token_id, backbone.device)
    module = prompt_module(spec.method, load_file(f"{result.artifact}/init_params.safetensors"))
    with torch.no_grad():
        before = loss_fn(backbone, module(), batch).item()
        after = loss_fn(backbone, load_file(f"{result.artifact}/prompt.safetensors")["prompt"], batch).item()
    assert after < before, (model, before, after)


def test_gemma_prompts_start_at_what_its_embedding_layer_outputs(gemma_dir: Path) -> None:
    """Gemma multiplies token embeddings by sqrt(d) on the way in: a prompt drawn from the raw weight table would
    start 25x too small. The table a prompt is drawn from is what the layer outputs."""
    backbone = load_backbone(ModelConfig("gemma3-270m"), torch.device("cpu"))
    ids = torch.tensor([494, 1000, 5000])
    with torch.no_grad():
        layer_out = backbone.input_embeddings(ids)
    torch.testing.assert_close(backbone.embedding_table()[ids], layer_out.float())
    assert backbone.embedding_table()[ids].norm(dim=-1).mean() > 20 * backbone.input_embeddings.weight[ids].norm(
        dim=-1).mean()


def test_gemma_training_batches_pack_and_give_the_plain_routes_loss(gemma_dir: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Gemma 3's local layers see 512 positions, more than a row of a 25-token prompt and 256 tokens of text: its
    batches pack (one pass for the prompt and the rows' real tokens), with the loss and gradient of the plain
    route, where the prompt runs before every row under the model's own sliding-window attention."""
    from core import scoring

    backbone = load_backbone(ModelConfig("gemma3-270m"), torch.device("cpu"))
    task = load_builtin_task("rotten_tomatoes")
    codec = Codec.for_backbone(backbone, task.answer_cue, 256)
    batch = collate([codec.encode(e.source, e.target) for e in task.train[:4]], "causal",
                    backbone.tokenizer.pad_token_id, backbone.device)
    prompt = backbone.embedding_table()[1000:1025].clone().requires_grad_(True)
    assert scoring.can_pack(backbone, prompt, batch)

    def loss_and_grad() -> tuple[float, torch.Tensor]:
        prompt.grad = None
        loss = loss_fn(backbone, prompt, batch)
        loss.backward()
        assert prompt.grad is not None
        return loss.item(), prompt.grad.clone()

    packed = loss_and_grad()
    monkeypatch.setattr(scoring, "can_pack", lambda *args: False)
    monkeypatch.setattr(scoring, "shared_prompt_cache", lambda *args: None)
    plain = loss_and_grad()
    assert packed[0] == pytest.approx(plain[0], rel=1e-5)
    torch.testing.assert_close(packed[1], plain[1], rtol=1e-3, atol=1e-6)
