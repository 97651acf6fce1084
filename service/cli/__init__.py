"""`medevents`, the one console script (see `service.cli.main`)."""
