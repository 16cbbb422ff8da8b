"""jobbuf-monitor: a Textual dashboard of every live jobbuf buffer. Plain asyncio; never imports trio."""
