"""The MongoDB adapters: client, repositories, indexes, the embedded server for local use."""
