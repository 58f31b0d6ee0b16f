"""Command-line options -> services, one module per twistd plugin.

Each module has ``Options`` and ``makeService`` as ``twisted.application.service.ServiceMaker``
expects; ``twisted/plugins/spreadqueue_plugins.py`` names them.
"""
