"""Methods: each contributes stage kinds that the one training loop (train_lib) runs."""

from xmodal_jax.methods import finetune, lsg, mona, pare

# Stage kind (config.stages.<name>.kind) → builder(name, stage_cfg, ctx) → Stage.
STAGE_KINDS = {
    "task": finetune.task_stage,
    "align": finetune.align_stage,
    "mona": mona.mona_stage,
    "pare": pare.pare_stage,
    "lsg": lsg.lsg_stage,
}

# Stage kind → init(name, stage_cfg, ctx, rng) → {group: params} of the parameter groups the
# method adds next to the model's (built once at set-up; see train_lib.method_params).
PARAM_INITS = {
    "pare": pare.init_params,
    "lsg": lsg.init_params,
}
