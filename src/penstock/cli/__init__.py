"""The `penstock` command: serve, chat, doctor, config."""
