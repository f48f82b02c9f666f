"""The trainer, split by job: ``optim`` (optimizers, schedules, train state), ``step`` (the jitted
step and its XLA statistics), ``setup`` (task, model, stages, batches), ``evaluate`` (whole-split
predictions and metrics), ``logs`` (metrics.jsonl, TensorBoard, curves) and ``loop`` (the one
training loop: resume, stages, checkpoints, final evaluation). ``xmodal_jax.train_lib`` gathers
their public names in one import."""
