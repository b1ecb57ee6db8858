"""Time-critical pathways (五大中心): chest pain, stroke, trauma, critical maternal and neonatal timelines."""
