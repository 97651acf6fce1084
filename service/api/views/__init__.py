"""HTTP handlers by resource, thin over the use cases; every body comes from `schemas/`."""
