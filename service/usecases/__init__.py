"""What the service does, the same for every entrypoint (HTTP, AMQP, the CLI): submit, read,
process, finish, retention, the operators' queries."""
