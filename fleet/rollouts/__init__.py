"""Staged rollouts, the pure core: selectors, stage plans, the health gate, the state machine.

No IO and no clock here: the controller (``fleet.rollouts_driver``) observes the fleet through
its store, hands the observation and the time to ``machine.step`` and carries out what it
answers. See ``docs/rollouts.md``.
"""
