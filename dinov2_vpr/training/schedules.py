"""The learning-rate factor of place training: SALAD's linear decay and BoQ's warm-up and steps, from config keys."""

from collections.abc import Callable

from omegaconf import DictConfig


def place_lr_factor(train_cfg: DictConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The factor of ``vpr.train.lr`` at each optimizer step (0-based), for ``torch.optim.lr_scheduler.LambdaLR``.

    The product of a linear warm-up ``min(1, (step + 1) / warmup_steps)``, a linear ramp from 1 to
    ``linear_end_factor`` over ``linear_steps`` steps (then constant, as torch's ``LinearLR``), and
    ``gamma`` for each epoch of ``milestones`` reached (as ``MultiStepLR`` stepped every epoch). A
    count of 0 turns its part off. SALAD: ``linear_end_factor=0.2, linear_steps=4000``; BoQ:
    ``warmup_steps=3900, milestones=[10, 20, 30], gamma=0.1``.
    """
    warmup, linear_steps = int(train_cfg.warmup_steps), int(train_cfg.linear_steps)
    end_factor, gamma = float(train_cfg.linear_end_factor), float(train_cfg.gamma)
    milestones = [int(epoch) for epoch in train_cfg.milestones]

    def factor(step: int) -> float:
        value = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
        if linear_steps > 0:
            value *= 1.0 + (end_factor - 1.0) * min(step, linear_steps) / linear_steps
        epoch = step // steps_per_epoch
        return value * gamma ** sum(epoch >= milestone for milestone in milestones)

    return factor
