"""The workbench's Jupyter server extension: the runs panel's API (`<base_url>workbench/api/`).

It lists and reads run folders under one runs root, draws their charts, compares runs, and starts
whitelisted workbench commands as jobs. Enabled by jupyter-config/jupyter_server_config.d/
interp_workbench.json (installed into etc/jupyter/jupyter_server_config.d/), or by hand with
`--ServerApp.jpserver_extensions='{"workbench.lab": true}'`. Importing this package is cheap: results,
charts and model code are imported when a request first needs them.
"""

from __future__ import annotations


def _jupyter_server_extension_points() -> list[dict]:
    return [{"module": "workbench.lab"}]


def _load_jupyter_server_extension(serverapp) -> None:
    """Register the API's handlers on the server, with this server's own state."""
    from workbench.lab.config import WorkbenchLab, resolve_runs_root
    from workbench.lab.handlers import handlers
    from workbench.lab.state import SETTINGS_KEY, LabState

    config = WorkbenchLab(parent=serverapp)
    root = resolve_runs_root(config.runs_root, serverapp.root_dir)
    web_app = serverapp.web_app
    web_app.settings[SETTINGS_KEY] = LabState(config, root)
    web_app.add_handlers(".*$", handlers(web_app.settings["base_url"]))
    serverapp.log.info("workbench lab: runs root %s", root)
