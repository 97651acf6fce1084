"""The HTTP side of the job service: app factory, configuration, MongoDB store."""
