"""What the service does, the same code whichever entrypoint asks (HTTP, AMQP, the CLI):
submit, read and wait, process and finish, retention, the operators' queries and dead letters."""
