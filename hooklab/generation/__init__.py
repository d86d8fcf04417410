"""Free-running generation under interventions (grafts, the random control, skipping, steering).

::

    from hooklab.generation import generate_arm, DEFAULT_ARMS

    for arm in DEFAULT_ARMS:  # pt, pt+late:it, pt+late:random, it, it+late:pt, it+late:random
        responses = generate_arm(pair, arm, prompts, max_new_tokens=64)

Lower level: :func:`generate` takes any model and ``(hook_name, fn)`` hooks, e.g. from
:func:`module_graft_hooks`, :func:`random_control_hooks`, :func:`skip_last` or your own.
"""

from hooklab.generation.arms import (
    ARM_GRAMMAR,
    DEFAULT_ARMS,
    Arm,
    arm_hooks,
    arm_prompt_ids,
    generate_arm,
    parse_arm,
)
from hooklab.generation.decode import (
    GenerationOutput,
    StepContext,
    current_step,
    generate,
    step_context,
)
from hooklab.generation.interventions import (
    module_graft_hooks,
    position_directions,
    random_control_hooks,
    skip_last,
    skip_layer_hooks,
    skip_mlp_hooks,
)

__all__ = [
    "ARM_GRAMMAR",
    "DEFAULT_ARMS",
    "Arm",
    "GenerationOutput",
    "StepContext",
    "arm_hooks",
    "arm_prompt_ids",
    "current_step",
    "generate",
    "generate_arm",
    "module_graft_hooks",
    "parse_arm",
    "position_directions",
    "random_control_hooks",
    "skip_last",
    "skip_layer_hooks",
    "skip_mlp_hooks",
    "step_context",
]
