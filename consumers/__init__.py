"""The RabbitMQ consumer and the submission processors (built in a later issue)."""
