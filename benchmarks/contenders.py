"""The things being measured, each behind the same small interface.

- `Ours`: one of LAMP Studio's prompt modules (core.methods.build_prompt), trained by core.train's optimizer step,
  scored by core.scoring — the code `lamp train` and `lamp predict` run.
- `PeftPromptTuning`: Hugging Face PEFT's prompt tuning (`PromptTuningConfig`, `PromptTuningInit.SAMPLE_VOCAB`) on
  the same frozen backbone object, called the way PEFT's documentation calls it: `model(input_ids, attention_mask,
  labels).loss` to train, `model(**inputs).logits` to score. With `answers_only` (the accuracy section, decoder-only
  models) the same loss is taken from logits at the answer positions only (`logits_to_keep`): the language-model
  head over a 262k vocabulary at every position is most of a PEFT step's time and memory on Gemma 3, and no
  position outside the answers carries a label.
- `Floor`: the frozen backbone with no prompt: forward and backward down to the input embeddings, nothing to update.
  No prompt method can train faster than this on the same batch.

Every contender gets the same encoded examples, collated by core.batching.collate, and the same AdamW settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.artifact import save_artifact
from core.backbone import Backbone
from core.batching import Codec, Encoded, collate
from core.methods import MethodConfig, build_prompt, input_offset
from core.scoring import loss_fn, rank_candidates
from core.spec import TrainConfig
from core.train import optimizer_step, param_groups

WEIGHT_DECAY = TrainConfig.weight_decay
GRAD_CLIP = TrainConfig.grad_clip


def _trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


class _Trained:
    """A contender with parameters to train: the ones that require grad, and AdamW over them."""

    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer

    def _train(self, module: nn.Module, lr: float, lr_scaling: str = "absolute") -> None:
        """AdamW over the trainable parameters, with fit()'s groups (core.train.param_groups: one rate, or each
        tensor's rate scaled by its starting RMS)."""
        self.params = _trainable(module)
        start = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
        groups = param_groups(module, lr, lr_scaling, start, fallback_rms=1.0)
        self.optimizer = torch.optim.AdamW(groups, weight_decay=WEIGHT_DECAY)

    @property
    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.params)


class Ours(_Trained):
    """A LAMP Studio prompt module with its optimizer."""

    def __init__(self, backbone: Backbone, config: MethodConfig, embeddings: torch.Tensor, common: list[int],
                 seed: int, lr: float, lr_scaling: str = "absolute") -> None:
        self.backbone, self.config = backbone, config
        self.method = config.name
        self.module, self.init_ids = build_prompt(config, embeddings, common, torch.Generator().manual_seed(seed))
        self.init_params = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        self.module.to(backbone.device)
        self._train(self.module, lr, lr_scaling)

    @property
    def formula_params(self) -> int:
        return self.config.trainable_params(self.backbone.hidden_size)

    @property
    def prompt_tokens(self) -> int:
        return self.config.prompt_tokens

    def step(self, items: Sequence[Encoded]) -> None:
        b = self.backbone
        batch = collate(items, b.family, b.tokenizer.pad_token_id, b.device)
        optimizer_step(loss_fn(b, self.module(), batch, input_offset(self.module)), self.params, self.optimizer,
                       GRAD_CLIP)

    def prompt(self) -> torch.Tensor:
        """The prompt the backbone reads (LAMP: pooled P'), as an artifact stores it. (n, d)"""
        with torch.no_grad():
            return self.module().detach()

    def offset(self) -> torch.Tensor | None:
        """What the method adds to the input's own token embeddings (DePT), as an artifact stores it; or None."""
        with torch.no_grad():
            offset = input_offset(self.module)
            return None if offset is None else offset.detach()

    def save(self, out: Path) -> None:
        manifest = {"spec": {"method": {"name": self.method}}, "init_token_ids": self.init_ids,
                    "trainable_params": self.trainable_params, "prompt_tokens": self.prompt_tokens}
        save_artifact(out, manifest, self.module.state_dict(), self.init_params, self.prompt(), self.offset())


class Floor:
    """The frozen backbone alone: backward reaches the input embeddings through a zero-length prompt."""

    method = "floor"
    trainable_params = 0
    formula_params = 0
    prompt_tokens = 0

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone
        self.empty = torch.zeros(0, backbone.hidden_size, device=backbone.device, requires_grad=True)  # (0, d)

    def step(self, items: Sequence[Encoded]) -> None:
        b = self.backbone
        batch = collate(items, b.family, b.tokenizer.pad_token_id, b.device)
        loss_fn(b, self.empty, batch).backward()

    def prompt(self) -> None:
        return None


class PeftPromptTuning(_Trained):
    """PEFT prompt tuning with a vocabulary-sampled init, on the same backbone object (PEFT leaves its weights be)."""

    method = "peft-pt"

    def __init__(self, backbone: Backbone, length: int, seed: int, lr: float, lr_scaling: str = "absolute",
                 answers_only: bool = False) -> None:
        from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

        seq2seq = backbone.family == "seq2seq"
        config = PromptTuningConfig(
            task_type=TaskType.SEQ_2_SEQ_LM if seq2seq else TaskType.CAUSAL_LM,
            num_virtual_tokens=length,
            prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB,
            num_transformer_submodules=1,  # encoder-decoder: the prompt before the encoder only, as ours
        )
        self.backbone, self.length = backbone, length
        self.answers_only = answers_only and not seq2seq
        torch.manual_seed(seed)  # SAMPLE_VOCAB draws its token ids from torch's global generator
        self.model = get_peft_model(backbone.model, config)
        self.model.to(backbone.device)
        self._train(self.model, lr, lr_scaling)

    @property
    def formula_params(self) -> int:
        return self.length * self.backbone.hidden_size

    @property
    def prompt_tokens(self) -> int:
        return self.length

    def loss(self, items: Sequence[Encoded]) -> torch.Tensor:
        """PEFT's training loss on a batch: the mean cross-entropy over the answer tokens."""
        b = self.backbone
        batch = collate(items, b.family, b.tokenizer.pad_token_id, b.device)
        if not self.answers_only:
            out = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels)
            return out.loss
        # The logits at position t predict token t + 1: keep the positions whose next token is labelled, in any
        # row, shifted past PEFT's l virtual tokens; what PEFT's `labels=` path computes, without the other rows.
        targets = batch.labels[:, 1:]
        columns = (targets != -100).any(dim=0).nonzero().squeeze(1)
        out = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                         logits_to_keep=columns + self.length)
        logits = out.logits.float()
        return nn.functional.cross_entropy(logits.flatten(0, 1), targets[:, columns].flatten(), ignore_index=-100)

    def step(self, items: Sequence[Encoded]) -> None:
        optimizer_step(self.loss(items), self.params, self.optimizer, GRAD_CLIP)

    def prompt(self) -> torch.Tensor:
        """PEFT's learned prompt embeddings, a plain (l, d) prompt that core.scoring can read."""
        prompt = self.model.get_prompt_embedding_to_save(adapter_name="default")  # PEFT hands it back on the CPU
        return prompt.detach().float().to(self.backbone.device)

    def save(self, out: Path) -> None:
        self.model.save_pretrained(str(out))

    def label_scores(self, codec: Codec, sources: Sequence[str], token_ids: Sequence[int]) -> torch.Tensor:
        """Log-probabilities of one-token label words after each source, PEFT's way (peft_label_scores)."""
        return peft_label_scores(self.model, self.backbone, self.length, codec, sources, token_ids)

    def close(self) -> None:
        """Let go of PEFT's wrapper; the backbone object is left as it was."""
        del self.model, self.optimizer, self.params


@torch.no_grad()
def peft_label_scores(model: Any, backbone: Backbone, length: int, codec: Codec, sources: Sequence[str],
                      token_ids: Sequence[int]) -> torch.Tensor:
    """Log-probabilities of one-token label words after each source through a PeftModel whose active adapter has
    `length` virtual tokens, PEFT's way: tokenizer, forward, logits.

    The input text is exactly what our codec builds (`<source>\\n<cue>:`), padded on the right. (B, labels)
    """
    b, tok = backbone, backbone.tokenizer
    texts = [f"{s}\n{codec.answer_cue}:" for s in sources] if b.family == "causal" else list(sources)
    enc = tok(texts, padding=True, padding_side="right", truncation=True, max_length=codec.max_length,
              return_tensors="pt").to(b.device)
    if b.family == "causal":
        logits = model(**enc).logits[:, length:]  # (B, S, V): the prompt positions dropped
        last = enc["attention_mask"].sum(dim=1) - 1  # right padding: the last real token of each row
        logits = logits[torch.arange(len(texts), device=b.device), last]  # (B, V)
    else:
        start = torch.full((len(texts), 1), b.model.config.decoder_start_token_id, device=b.device)
        logits = model(**enc, decoder_input_ids=start).logits[:, 0]
    return torch.log_softmax(logits.float(), dim=-1)[:, list(token_ids)]


class PeftAdapters:
    """Several fixed prompts as PEFT prompt-tuning adapters of one PeftModel, answered one adapter at a time
    (`set_adapter`): PEFT batches the rows of one prompt-tuning adapter, not rows of different ones."""

    method = "peft-pt"

    def __init__(self, backbone: Backbone, prompts: Sequence[torch.Tensor]) -> None:
        from peft import PromptTuningConfig, TaskType, get_peft_model

        seq2seq = backbone.family == "seq2seq"
        self.backbone, self.lengths = backbone, [int(p.shape[0]) for p in prompts]
        self.model: Any = None
        for k, prompt in enumerate(prompts):
            config = PromptTuningConfig(task_type=TaskType.SEQ_2_SEQ_LM if seq2seq else TaskType.CAUSAL_LM,
                                        num_virtual_tokens=prompt.shape[0], num_transformer_submodules=1)
            if self.model is None:
                self.model = get_peft_model(backbone.model, config, adapter_name=f"p{k}")
            else:
                self.model.add_adapter(f"p{k}", config)
            with torch.no_grad():
                self.model.prompt_encoder[f"p{k}"].embedding.weight.copy_(prompt)
        self.model.to(backbone.device).eval()

    def label_scores(self, k: int, codec: Codec, sources: Sequence[str], token_ids: Sequence[int]) -> torch.Tensor:
        """The k-th prompt's label-word log-probabilities. (B, labels)"""
        self.model.set_adapter(f"p{k}")
        return peft_label_scores(self.model, self.backbone, self.lengths[k], codec, sources, token_ids)

    def close(self) -> None:
        del self.model


def our_label_scores(backbone: Backbone, prompt: torch.Tensor | None, codec: Codec, sources: Sequence[str],
                     words: Sequence[str]) -> list[list[float]]:
    """What `lamp predict` and evaluation run: core.scoring.rank_candidates, one batch of all sources."""
    return rank_candidates(backbone, prompt, codec, sources, [list(words)] * len(sources), batch_size=len(sources))
