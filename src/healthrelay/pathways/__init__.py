"""Time-critical pathways (五大中心): chest pain, stroke, trauma, critical maternal and neonatal timelines.

Importing the package registers the care-relationship check (flows.py), so every process that loads the
models knows that being party to a case lets staff see the patient.
"""

from healthrelay.pathways import flows as flows  # noqa: E402,F401
