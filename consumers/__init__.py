"""The AMQP entrypoint: the RabbitMQ consumer, its process, and the job types it processes
(`consumers/processors/`)."""
