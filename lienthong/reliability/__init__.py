"""Reliability, proven (issue #7): ``make reliability`` runs the three flows against the stand-ins
with seeded random faults and SIGKILLs, then checks design §4's invariants against the stand-ins'
own state. :mod:`.harness` drives the run, :mod:`.worker` is one task step in its own process,
:mod:`.checks` holds the invariant checks."""
