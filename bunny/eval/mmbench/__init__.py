"""MMBench: the xlsx upload file for the official evaluation server."""
