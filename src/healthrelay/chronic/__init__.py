"""Chronic disease management: registries, family-doctor contracts, readings, follow-ups, worklists, indicators."""
