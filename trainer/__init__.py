"""loradock's trainer: YAML config + dataset -> an evaluated adapter version in the registry.

Built in the trainer issue; the registry already has the tables it fills (runs, evaluations).
"""
