"""The chaos soak (``make soak``): deals live their whole lives while the worker, the
server and SMTP fail under them; see ``soak/__main__.py``."""
