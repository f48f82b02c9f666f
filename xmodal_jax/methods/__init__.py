"""Methods: each module declares one :class:`~xmodal_jax.methods.base.Method` record (its stage
kinds, stage keys, parameter groups and checks); the trainer and the config read them from here.

Adding a method is one module with a ``METHOD`` record and its line in :data:`METHODS`.
"""

from xmodal_jax.methods import finetune, lsg, mona, pare
from xmodal_jax.methods.base import Method

METHODS: tuple[Method, ...] = (finetune.METHOD, mona.METHOD, pare.METHOD, lsg.METHOD)

# Stage kind (config.stages.<name>.kind) → builder(name, stage_cfg, ctx) → Stage.
STAGE_KINDS = {kind: build for m in METHODS for kind, build in m.stage_kinds.items()}

# Stage kind → init(name, stage_cfg, ctx, rng) → {group: params} of the parameter groups the
# method adds next to the model's (built once at set-up; see train.setup.method_params).
PARAM_INITS = {kind: init for m in METHODS for kind, init in m.param_inits.items()}


def register(method: Method) -> None:
    """Adds a method defined outside the library (its stage kinds, keys, groups and checks).

    Refuses a stage kind, stage key or parameter group that an existing method already owns,
    naming it, so two methods can never silently share a knob. Config files that use its stage
    kinds must run after this call (validation reads the registry).
    """
    global METHODS
    from xmodal_jax import config_lib

    kinds = set(method.stage_kinds) & set(STAGE_KINDS)
    keys = set(method.defaults) & set(config_lib.stage_defaults())
    groups = set(method.groups) & set(config_lib.groups())
    for what, clash in (("stage kind", kinds), ("stage key", keys), ("parameter group", groups)):
        if clash:
            raise ValueError(f"method {method.name!r}: {what}(s) {sorted(clash)} already exist")
    METHODS = (*METHODS, method)
    STAGE_KINDS.update(method.stage_kinds)
    PARAM_INITS.update(method.param_inits)
