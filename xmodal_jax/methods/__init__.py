"""Methods: each contributes stage kinds that the one training loop (train_lib) runs."""

from xmodal_jax.methods import finetune, mona

# Stage kind (config.stages.<name>.kind) → builder(name, stage_cfg, ctx) → Stage.
STAGE_KINDS = {
    "task": finetune.task_stage,
    "align": finetune.align_stage,
    "mona": mona.mona_stage,
}
