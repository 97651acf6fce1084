"""One module per job type, each defining `JOB_TYPE` (see `consumers.registry`)."""
