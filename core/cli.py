"""The engine's commands: `lamp train`, `eval`, `predict`, `params`, `export` and `inspect`, without a queue or UI.

`register(subparsers)` adds them to the `lamp` parser, which the composition root (`lamp/cli.py`) builds from each
layer's commands; the run flags and `spec_from_args` are shared with the queue's commands (`lamp submit`, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from core.errors import LampError
from core.events import Event
from core.inputs import check_inputs
from core.methods import METHODS, DeptConfig, LampConfig, ResidualPtConfig, method_config, trainable_param_counts
from core.spec import (
    DEFAULT_METHOD,
    DEFAULT_STEPS,
    MLFLOW_ENV,
    TENSORBOARD_ENV,
    DataConfig,
    ModelConfig,
    RunSpec,
    TrainConfig,
    validate_spec,
)

_M, _D, _T, _LAMP = ModelConfig(), DataConfig(), TrainConfig(), LampConfig()
"""The settings' own defaults: the flags below read them, so each is written once (core.spec, core.methods)."""


def add_spec_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of one tuning run, shared by `lamp train` and `lamp submit`."""
    g = p.add_argument_group("model")
    g.add_argument("--model", default=_M.name, help="hub id, local folder, or `default` (offline SmolLM2-135M)")
    g.add_argument("--dtype", default=_M.dtype, choices=["float32", "bfloat16", "float16"])
    g.add_argument("--quantize", default=_M.quantize, choices=["none", "4bit"],
                   help="4bit: NF4 via bitsandbytes (CUDA)")
    _add_data_arguments(p)
    g = p.add_argument_group("method")
    g.add_argument("--method", default=DEFAULT_METHOD, choices=list(METHODS))
    g.add_argument("--length", type=int, default=None,
                   help=f"soft prompt tokens l (default: the method's; lamp {_LAMP.length}, dept {DeptConfig.length})")
    g.add_argument("--rank", type=int, default=None,
                   help=f"rank r for lamp, dpt, ulpt and dept (default: the method's; lamp {_LAMP.rank})")
    g.add_argument("--pool", type=int, default=None,
                   help=f"lamp: average-pool blocks of p tokens (default {_LAMP.pool})")
    g.add_argument("--init", default=None, choices=["balanced", "paper"],
                   help=f"lamp: starting Q (default {_LAMP.init})")
    g.add_argument("--bottleneck", type=int, default=None,
                   help=f"residual-pt: the network's hidden width (default {ResidualPtConfig.bottleneck})")
    g.add_argument("--positions", type=int, default=None,
                   help=f"dept: input positions s its offset covers (default {DeptConfig.positions})")
    g.add_argument("--pair-lr", type=float, default=None,
                   help=f"dept: the rate of A and B as a multiple of --lr (default {DeptConfig.pair_lr})")
    _add_train_arguments(p)


def _add_data_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--task", default=None, help=f"built-in task (default {_D.task} unless --train is given)")
    g.add_argument("--data-dir", default=None, help="local copy of a GLUE/SuperGLUE data set")
    g.add_argument("--train", dest="train_file", default=None, help="your training data: CSV, TSV, JSONL, Parquet")
    g.add_argument("--eval", dest="eval_file", default=None, help="your evaluation data (same columns)")
    g.add_argument("--text-column", default=None)
    g.add_argument("--template", default=None, help="input built from several columns, e.g. 'q: {question}'")
    g.add_argument("--label-column", default=None)
    g.add_argument("--kind", default=_D.kind, choices=["auto", "classification", "generation"])
    g.add_argument("--max-train-examples", type=int, default=_D.max_train_examples)
    g.add_argument("--max-eval-examples", type=int, default=_D.max_eval_examples,
                   help="validation examples per periodic eval")
    g.add_argument("--max-test-examples", type=int, default=_D.max_test_examples)
    g.add_argument("--split-seed", type=int, default=_D.split_seed,
                   help=f"seed of the train/validation/test split (default {_D.split_seed})")
    g.add_argument("--strict", action="store_true",
                   help="refuse your file for one row with an empty input or label (default: skip and report them)")
    g.add_argument("--eval-labels", default=_D.eval_labels, choices=["add", "drop"],
                   help="labels only --eval has: add them to the label words (scored, never trained on) or drop "
                        "those rows (default: refuse, naming them)")


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=int, default=None,
                   help=f"optimizer steps (default {DEFAULT_STEPS} unless --epochs)")
    g.add_argument("--epochs", type=float, default=None)
    g.add_argument("--batch-size", type=int, default=_T.batch_size)
    g.add_argument("--lr", type=float, default=None, help="default: the method's measured default (README)")
    g.add_argument("--lr-scaling", default=None, choices=["absolute", "relative"],
                   help="relative: each trainable tensor's rate is --lr times its starting RMS (README)")
    g.add_argument("--prompt-init", default=None, choices=["vocab", "text"],
                   help="start from sampled common tokens (vocab) or from a text's tokens (text)")
    g.add_argument("--prompt-init-text", default=None, help="the text of --prompt-init text (default: from the task)")
    g.add_argument("--weight-decay", type=float, default=_T.weight_decay)
    g.add_argument("--warmup-steps", type=int, default=_T.warmup_steps)
    g.add_argument("--grad-clip", type=float, default=_T.grad_clip)
    g.add_argument("--max-length", type=int, default=_T.max_length)
    g.add_argument("--eval-every", type=int, default=_T.eval_every)
    g.add_argument("--checkpoint-every", type=int, default=_T.checkpoint_every)
    g.add_argument("--seed", type=int, default=_T.seed)
    g.add_argument("--init-from", default=None, metavar="ARTIFACT",
                   help="warm start from a finished run's prompt (its artifact directory; `lamp submit` also takes "
                        "a job id): same length l and a model of the same hidden size")
    g.add_argument("--device", default=_T.device, help="auto, cpu, cuda or cuda:N")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    g.add_argument("--generate-eval", action="store_true",
                   help="also score a classification task's test split by generation (greedy exact match)")
    g.add_argument("--no-generate-eval", action="store_true", help=argparse.SUPPRESS)  # the default; kept for scripts
    g.add_argument("--mlflow", default=os.environ.get(MLFLOW_ENV) or None, metavar="URI",
                   help=f"log the run to MLflow (e.g. sqlite:///runs/mlflow.db; or {MLFLOW_ENV}); needs the "
                        "tracking extra")
    g.add_argument("--tensorboard", default=os.environ.get(TENSORBOARD_ENV) or None, metavar="DIR",
                   help=f"write TensorBoard event files under DIR (or {TENSORBOARD_ENV}); needs the tracking extra")


def spec_from_args(a: argparse.Namespace) -> RunSpec:
    """The run's settings from parsed flags, validated, and what it reads checked (core.inputs): the CLI's one
    submission of this run."""
    task = a.task if a.task is not None or a.train_file is not None else _D.task
    spec = RunSpec(
        model=ModelConfig(a.model, a.dtype, a.quantize),
        method=method_config(a.method, length=a.length, rank=a.rank, pool=a.pool, init=a.init,
                             bottleneck=a.bottleneck, positions=a.positions, pair_lr=a.pair_lr),
        data=DataConfig(task=task, data_dir=a.data_dir, train_file=a.train_file, eval_file=a.eval_file,
                        text_column=a.text_column, template=a.template, label_column=a.label_column, kind=a.kind,
                        max_train_examples=a.max_train_examples, max_eval_examples=a.max_eval_examples,
                        max_test_examples=a.max_test_examples, split_seed=a.split_seed, strict=a.strict,
                        eval_labels=a.eval_labels),
        train=TrainConfig(steps=a.steps, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr,
                          weight_decay=a.weight_decay, warmup_steps=a.warmup_steps, grad_clip=a.grad_clip,
                          max_length=a.max_length, eval_every=a.eval_every, checkpoint_every=a.checkpoint_every,
                          seed=a.seed, init_from=a.init_from, device=a.device, threads=a.threads,
                          generate_eval=a.generate_eval and not a.no_generate_eval, mlflow_uri=a.mlflow,
                          tensorboard_dir=a.tensorboard,
                          **_given(prompt_init=a.prompt_init, prompt_init_text=a.prompt_init_text,
                                   lr_scaling=a.lr_scaling)),
    )
    validate_spec(spec)
    check_inputs(spec)
    return spec


def _given(**values: Any) -> dict[str, Any]:
    """The flags that were given (None: the setting's own default in core.spec)."""
    return {k: v for k, v in values.items() if v is not None}


def default_out_dir(spec: RunSpec) -> Path:
    from core.backbone import lamp_home

    task = spec.data.task or Path(spec.data.train_file or "data").stem
    return lamp_home() / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{spec.method.name}-{task}"


class ProgressPrinter:
    """Listens to training events: a tqdm bar on stderr, eval results and warnings as lines."""

    def __init__(self, quiet: bool = False) -> None:
        self.bar: Any = None
        self.quiet = quiet

    def __call__(self, event: Event) -> None:
        from tqdm import tqdm

        if event.kind == "start":
            if event.data.get("resumed_from"):
                self._line(f"resuming from step {event.data['resumed_from']}")
            self._line(f"{event.data['method']}: {event.data['trainable_params']:,} trainable parameters, "
                       f"{event.data['prompt_tokens']} prompt tokens, lr {event.data['lr']}")
            self.bar = tqdm(total=event.total_steps, initial=event.step, file=sys.stderr, disable=self.quiet,
                            unit="step", dynamic_ncols=True)
        elif event.kind == "phase" and self.bar is not None:
            phase, total = event.data["phase"], event.data.get("total")
            self.bar.set_description(f"{phase} {event.data['done']}/{total}" if total else phase, refresh=True)
        elif event.kind == "step" and self.bar is not None:
            self.bar.update(event.step - self.bar.n)
            self.bar.set_postfix(loss=f"{event.data['loss']:.3f}", ex_s=f"{event.data['examples_per_second']:.1f}",
                                 norm=f"{event.data['norm_ratio']:.2f}x")
        elif event.kind in ("eval", "test"):
            shown = ", ".join(f"{k} {v:.4f}" for k, v in event.data.items() if isinstance(v, int | float))
            self._line(f"step {event.step} {'validation' if event.kind == 'eval' else 'test'}: {shown}")
        elif event.kind == "warning":
            self._line(f"warning at step {event.step}: {event.data['message']}" if event.step else
                       f"warning: {event.data['message']}")
        elif event.kind == "done" and self.bar is not None:
            self.bar.close()

    def _line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)


def cmd_train(a: argparse.Namespace) -> int:
    from core.train import fit

    spec = spec_from_args(a)
    out = Path(a.out) if a.out else default_out_dir(spec)
    result = fit(spec, out, on_event=ProgressPrinter(quiet=a.quiet))
    summary = result.to_json()
    if a.json:
        print(json.dumps(summary))
    else:
        print(f"artifact: {result.artifact}")
        print(f"metrics: {json.dumps(result.metrics)}")
        print(f"{result.steps} steps in {result.train_seconds:.1f}s ({result.examples_per_second:.1f} examples/s), "
              f"peak memory {result.peak_memory_mb:.0f} MB, {result.trainable_params:,} trainable parameters")
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    """Score the bare model (no prompt) or a trained artifact on a task's test split."""
    from core.backbone import load_backbone, resolve_device
    from core.batching import Codec
    from core.evaluate import evaluate
    from core.train import load_task

    if a.artifact:
        from core.inference import Predictor

        pred = Predictor.load(a.artifact, device=a.device)
        spec, backbone, prompt = pred.artifact.spec, pred.backbone, pred.prompt
    else:
        spec = spec_from_args(a)
        backbone, prompt = load_backbone(spec.model, resolve_device(spec.train.device)), None
    task = load_task(spec.data)
    codec = Codec.for_backbone(backbone, task.answer_cue, spec.train.max_length)
    examples = task.test[: a.max_test_examples]
    metrics, scoring = evaluate(backbone, prompt, codec, task, examples,
                                generate=a.generate_eval and not a.no_generate_eval)
    out = {"metrics": metrics, "scoring": scoring, "examples": len(examples), "prompt": bool(a.artifact)}
    print(json.dumps(out) if a.json else "\n".join(f"{k}: {v:.4f} ({scoring[k]})" for k, v in metrics.items()))
    return 0


def cmd_predict(a: argparse.Namespace) -> int:
    from core.inference import MultiPredictor, render_source

    multi = MultiPredictor.load(a.artifact, device=a.device, model=a.model)
    texts = list(a.text or [])
    if a.input_file:
        texts += [line.rstrip("\n") for line in Path(a.input_file).read_text(encoding="utf-8").splitlines() if line]
    if not texts and not a.field:
        raise LampError("give --text (repeatable), --input-file, or --field name=value")
    fields = dict(f.split("=", 1) for f in a.field or [])

    def sources(template: str) -> list[str]:
        if a.raw:
            return texts
        if texts:
            return [render_source(template, t, fields) for t in texts]
        return [render_source(template, None, fields)]

    one = len(multi.predictors) == 1  # one prompt: Predictor.predict itself
    tick = time.perf_counter()
    answers = multi.predict([sources(p.template) for p in multi.predictors], bare=a.bare,
                            sequential=a.sequential or one)
    if not one:
        how = "one prompt at a time" if a.sequential else "in shared batches"
        print(f"{len(answers[0])} input(s) x {len(answers)} prompts {how}: {time.perf_counter() - tick:.2f} s",
              file=sys.stderr)
        _print_several(a, texts, answers)
        return 0
    for p in answers[0]:
        if a.json:
            print(json.dumps({"input": p.source, "answer": p.answer, "generated": p.generated, "scores": p.scores}))
        else:
            scores = "  ".join(f"{w}={s:.3f}" for w, s in p.scores.items())
            print(f"{p.answer}\t{scores}" if scores else p.answer)
    return 0


def _print_several(a: argparse.Namespace, texts: list[str], answers: list[list[Any]]) -> None:
    """One line per input: --json an object with one entry per artifact, else a table with one column each."""
    if not a.json:
        print("\t".join(["input", *(Path(p).name for p in a.artifact)]))
    for j in range(len(answers[0])):
        row = [answers[k][j] for k in range(len(answers))]
        text = texts[j] if texts else row[0].source
        if a.json:
            print(json.dumps({"input": text, "answers": [
                {"artifact": art, "input": p.source, "answer": p.answer, "generated": p.generated,
                 "scores": p.scores} for art, p in zip(a.artifact, row, strict=True)]}))
        else:
            cells = [f"{p.answer} ({p.scores[p.answer]:.2f})" if p.scores else p.answer for p in row]
            print("\t".join([text, *cells]))


def cmd_params(a: argparse.Namespace) -> int:
    counts = trainable_param_counts(a.hidden_size, a.length, a.rank, a.pool)
    if a.json:
        print(json.dumps(counts))
    else:
        for name, n in counts.items():
            print(f"{name:14s} {n:>12,}")
    return 0


def cmd_inspect(a: argparse.Namespace) -> int:
    from core.errors import ConfigError
    from core.inspection import format_text, inspect_artifact

    if a.top_k < 1:
        raise ConfigError(f"--top-k {a.top_k}: must be at least 1")
    ins = inspect_artifact(a.artifact, top_k=a.top_k, model=a.model)
    print(json.dumps(ins.to_json()) if a.json else format_text(ins))
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from core.export import export_peft, export_prompt_embeds

    out = (export_prompt_embeds(a.artifact, a.out) if a.format == "prompt-embeds"
           else export_peft(a.artifact, a.out, base_model=a.base_model))
    print(str(out))
    return 0


def register(sub: Any) -> None:
    """Add the engine's commands to the `lamp` parser's subcommands."""
    p = sub.add_parser("train", help="one tuning run in the foreground, with a progress bar")
    add_spec_arguments(p)
    p.add_argument("--out", default=None, help="artifact directory (default $LAMP_HOME/runs/<time>-<method>-<task>)")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("eval", help="score the bare model, or --artifact, on a task's test split")
    add_spec_arguments(p)
    p.add_argument("--artifact", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_eval)

    p = sub.add_parser("predict", help="answer with one or several trained prompts")
    p.add_argument("--artifact", action="append", required=True,
                   help="a trained prompt's directory; repeat it to answer with several prompts on one backbone in "
                        "shared batches (one column or JSON entry per artifact)")
    p.add_argument("--text", action="append", help="input text (repeatable); the task's template is applied")
    p.add_argument("--input-file", "--input", default=None, help="one input per line")
    p.add_argument("--sequential", action="store_true",
                   help="several artifacts: one prompt after another instead of shared batches (to compare)")
    p.add_argument("--field", action="append", help="name=value for tasks whose input has several fields")
    p.add_argument("--raw", action="store_true", help="use --text as the model input as is, no template")
    p.add_argument("--bare", action="store_true", help="answer with the bare model, without the prompt")
    p.add_argument("--model", default=None, help="another backbone with the same hidden size")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_predict)

    p = sub.add_parser("params", help="trainable parameters per method, from the formulas (no model loaded)")
    p.add_argument("--hidden-size", type=int, required=True)
    p.add_argument("--length", type=int, required=True)
    p.add_argument("--rank", type=int, default=_LAMP.rank)
    p.add_argument("--pool", type=int, default=1)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_params)

    p = sub.add_parser("export", help="write the pooled prompt as a PEFT adapter or as prompt embeddings (vLLM)")
    p.add_argument("--artifact", required=True)
    p.add_argument("--format", default="peft", choices=["peft", "prompt-embeds"],
                   help="peft: a prompt-tuning adapter; prompt-embeds: the tensor with its backbone and template, "
                        "for engines that take embeddings as input (core.prompt_embeds builds the request)")
    p.add_argument("--out", required=True)
    p.add_argument("--base-model", default=None, help="base model id to record (default: the one trained on)")
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser("inspect", help="inside a trained prompt: nearest tokens, norms, Q over training, drift")
    p.add_argument("--artifact", required=True)
    p.add_argument("--top-k", type=int, default=5, help="nearest vocabulary tokens per prompt vector (default 5)")
    p.add_argument("--model", default=None, help="read the vocabulary of another backbone of the same hidden size")
    p.add_argument("--json", action="store_true", help="one JSON object (C itself left out: see the dashboard)")
    p.set_defaults(handler=cmd_inspect)
