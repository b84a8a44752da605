"""Attacks that test every method's privacy, and the scores that say how well they did.

The attacker code sees only what a threat model exposes (:mod:`rvepfl.attacks.threat`); the
ground truth reaches only the scoring (:mod:`rvepfl.attacks.scores`).
"""
