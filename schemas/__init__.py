"""Every marshmallow schema of the service: HTTP responses, message bodies, entity payloads."""
