"""Gateway: the HTTP surface in OpenAI's shapes — auth, validation, errors."""
