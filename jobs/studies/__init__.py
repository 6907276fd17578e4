"""Studies: a search over a run's knobs (method x length x rank x pool x lr x lr scaling x prompt init x seed) on
Optuna, one trial = one job. A client of the queue: it submits jobs and reads the store; the queue calls it only
through the hooks a worker is given when it starts (jobs.hooks).

Optuna asks, our queue runs, Optuna is told (ask-and-tell):
- a study is a row of `lamp_studies` plus an Optuna study of the same name in Optuna's own database
  (`storage_url()`: never ours, since Optuna brings its own tables and Alembic history);
- grids use Optuna's GridSampler; budgets a multi-objective sampler (TPE by default, NSGA-II or random). The first
  objective is accuracy (the best validation value of the task's primary metric, maximised); the others are costs
  to minimise: trainable parameters, training seconds, peak memory;
- pruning: Optuna does not prune multi-objective studies, so each study has a single-objective twin
  (`<name>:pruning`) whose trials receive the evaluation metric as intermediate values from the training process
  (`PruningHook`) and whose pruner decides. A pruned trial's job ends PRUNED, not FAILED.

One module for each concern:
    plan      what a person asked for, checked before anything is written (pure)
    optuna_db Optuna's database, samplers, pruners and studies
    conduct   advancing a study (tell, ask, done): the one writer; create, cancel, relaunch; the worker's hooks
    pruning   the listener in the training process
    views     reading a study: trials, settings over seeds, fronts, recommendation (reads only)
    report    its tables and charts (pandas, plotly; imported on its own by the CLI and the Study tab)
Import from the module you need: this package imports none of them, so that naming one (the training process
imports `pruning` by name) loads only what it needs.
"""
