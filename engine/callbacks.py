"""Periodic actions in the loop: one helper, so every interval means the same thing."""


def step_check(step: int, every: int, last_step: int | None = None) -> bool:
    """True on every `every`-th step (1-based steps) and on the last step; never when every <= 0."""
    if every <= 0:
        return False
    return step % every == 0 or (last_step is not None and step == last_step)
