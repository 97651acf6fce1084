"""The RabbitMQ adapters: topology, submissions published and consumed, events, dead letters."""
