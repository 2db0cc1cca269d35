"""Router and policy: which deployment serves a request, and why."""
