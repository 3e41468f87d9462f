"""Prefect flows: thin wrappers whose tasks call ganops.stages (the same functions DVC runs)."""
