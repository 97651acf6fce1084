"""HTTP handlers by resource, thin over the use cases (entity reads go straight to the entity
store, the read side of what jobs wrote); every body comes from `schemas/`."""
