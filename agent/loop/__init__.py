"""The process's asyncio plumbing: which event loop runs, and tasks started from callbacks."""
