"""The job service for medical-event submissions: its domain, storage and messaging adapters,
use cases, the composition root (`bootstrap`), the HTTP API and the `medevents` command."""
