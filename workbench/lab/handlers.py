"""The HTTP API under `<base_url>workbench/api/`: Jupyter-authenticated handlers over the lab's state.

Every handler is an `APIHandler` whose verbs are `@tornado.web.authenticated`: a request without the
user's token or login cookie gets 403, and a POST or DELETE authenticated by cookie must carry Jupyter's
XSRF token (the base class checks it). Errors answer JSON {"message": ...}: 400 for a refused request,
403 for a path outside the runs root, 404 for no such run or job, 409 for a run without results yet or
a job that cannot start now.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from typing import Any

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.iostream import StreamClosedError

from workbench.lab.charts import CompareError
from workbench.lab.commands import InvalidRequest, parse_request
from workbench.lab.index import NotReady
from workbench.lab.jobs import JobRefused
from workbench.lab.paths import Forbidden, NotFound
from workbench.lab.progress import progress_message
from workbench.lab.report import CONTENT_SECURITY_POLICY, report_page
from workbench.lab.state import SETTINGS_KEY, LabState

KEEP_ALIVE_S = 15.0  # a comment line this often keeps proxies from closing a quiet progress stream
ERRORS: tuple[tuple[type[Exception], int], ...] = (
    (NotFound, 404),
    (Forbidden, 403),
    (NotReady, 409),
    (JobRefused, 409),
    (InvalidRequest, 400),
    (CompareError, 400),
)


class LabHandler(APIHandler):
    """Base: the lab's state, blocking work off the event loop, and errors as HTTP status codes."""

    @property
    def lab(self) -> LabState:
        return self.settings[SETTINGS_KEY]

    async def work(self, function: Callable[..., Any], *args: Any) -> Any:
        """`function(*args)` on the lab's threads, its known errors turned into HTTP errors."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.lab.executor, function, *args)
        except web.HTTPError:
            raise
        except Exception as err:
            raise http_error(err) from err

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """JSON {"message", "reason"}, the message with its arguments filled in (the base class drops them,
        and a message given without arguments would break the server's log on a '%')."""
        error = (kwargs.get("exc_info") or (None, None, None))[1]
        if isinstance(error, web.HTTPError) and error.log_message and error.args:
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"message": error.log_message % error.args, "reason": error.reason}))
            return
        super().write_error(status_code, **kwargs)

    def reply(self, body: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        try:
            text = json.dumps(body, allow_nan=False, default=str)
        except ValueError:  # a NaN in a hand-edited results.json: null, as JSON has no NaN
            text = json.dumps(finite(body), allow_nan=False, default=str)
        self.finish(text)


def finite(value: Any) -> Any:
    """`value` with every NaN or infinity (anywhere inside) replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def http_error(err: Exception) -> Exception:
    """The HTTP error for one of the lab's own errors; any other error unchanged (500)."""
    for kind, code in ERRORS:
        if isinstance(err, kind):
            return web.HTTPError(code, "%s", str(err))
    return err


class RunsHandler(LabHandler):
    @web.authenticated
    async def get(self) -> None:
        args = {name: self.get_argument(name, None) for name in ("kind", "status", "q", "sort")}
        try:
            rows = await self.work(lambda: self.lab.index.rows(**args))
        except ValueError as err:  # an unknown sort
            raise web.HTTPError(400, "%s", str(err)) from err
        self.reply({"root": str(self.lab.root), "runs": rows})


class RunHandler(LabHandler):
    @web.authenticated
    async def get(self, run: str) -> None:
        self.reply(await self.work(self.lab.index.detail, run))


class ChartsHandler(LabHandler):
    @web.authenticated
    async def get(self, run: str) -> None:
        def charts() -> dict:
            loaded, _ = self.lab.index.complete_run(run)
            return {"charts": self.lab.charts.run_charts(loaded)}

        self.reply(await self.work(charts))


class ReportHandler(LabHandler):
    @property
    def content_security_policy(self) -> str:
        return CONTENT_SECURITY_POLICY

    @web.authenticated
    async def get(self, run: str) -> None:
        def page() -> str:
            loaded, _ = self.lab.index.complete_run(run)
            return report_page(loaded, run, self.lab.charts)

        self.finish(await self.work(page), set_content_type="text/html; charset=utf-8")


class ProgressHandler(LabHandler):
    """Progress JSON; with ?stream=1 an event stream of it that ends when the run stops running."""

    @web.authenticated
    async def get(self, run: str) -> None:
        status, progress = await self.work(self.lab.run_state, run)
        if self.get_argument("stream", "") not in ("1", "true"):
            self.reply(progress_message(progress, status))
            return
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        last, sent_at = None, 0.0
        try:
            while True:
                message = json.dumps(progress_message(progress, status), allow_nan=False)
                if message != last:
                    self.write(f"data: {message}\n\n")
                    last, sent_at = message, time.monotonic()
                    await self.flush()
                elif time.monotonic() - sent_at > KEEP_ALIVE_S:
                    self.write(": keep-alive\n\n")
                    sent_at = time.monotonic()
                    await self.flush()
                if status != "running":
                    break
                await asyncio.sleep(self.lab.config.poll_interval_s)
                try:
                    status, progress = self.lab.run_state(run)
                except (NotFound, Forbidden):  # the folder was removed under the stream
                    status, progress = "unreadable", None
        except StreamClosedError:  # the browser went away
            return
        self.finish(set_content_type="text/event-stream")


class CompareHandler(LabHandler):
    @web.authenticated
    async def get(self) -> None:
        ids = list(dict.fromkeys(self.get_arguments("id")))

        def compare() -> dict:
            runs = [(run, *self.lab.index.complete_run(run)) for run in ids]
            return self.lab.charts.compare(runs)

        self.reply(await self.work(compare))


class CommandsHandler(LabHandler):
    @web.authenticated
    async def get(self) -> None:
        specs = await self.work(self.lab.whitelist)
        self.reply({"commands": [spec.to_json() for spec in specs.values()]})


class JobsHandler(LabHandler):
    @web.authenticated
    async def get(self) -> None:
        self.reply({"jobs": [job.to_dict() for job in self.lab.jobs.jobs()]})

    @web.authenticated
    async def post(self) -> None:
        body = self.get_json_body()
        specs = await self.work(self.lab.whitelist)
        try:
            spec, arguments = parse_request(body, specs)
            job = self.lab.jobs.start(spec.name, spec.label, arguments)
        except (InvalidRequest, JobRefused) as err:
            raise http_error(err) from err
        self.log.info("workbench lab: started job %s: %s", job.id, " ".join(job.argv))
        self.reply({"job": job.to_dict()}, status=201)


class JobHandler(LabHandler):
    def _job(self, job_id: str):
        job = self.lab.jobs.get(job_id)
        if job is None:
            raise web.HTTPError(404, "%s", f"no job {job_id!r} was started by this server")
        return job

    @web.authenticated
    async def get(self, job_id: str) -> None:
        self.reply({"job": self._job(job_id).to_dict()})

    @web.authenticated
    async def delete(self, job_id: str) -> None:
        job = self._job(job_id)
        self.lab.jobs.cancel(job)
        self.log.info("workbench lab: cancelling job %s (pid %s)", job.id, job.process.pid)
        self.reply({"job": job.to_dict()}, status=202)


def handlers(base_url: str) -> list[tuple[str, type[LabHandler]]]:
    """The URL patterns of the API under `base_url` (the most specific first: a run id may hold '/')."""
    api = url_path_join(base_url, "workbench", "api")
    return [
        (url_path_join(api, "runs"), RunsHandler),
        (url_path_join(api, r"runs/(.+)/charts"), ChartsHandler),
        (url_path_join(api, r"runs/(.+)/report"), ReportHandler),
        (url_path_join(api, r"runs/(.+)/progress"), ProgressHandler),
        (url_path_join(api, r"runs/(.+)"), RunHandler),
        (url_path_join(api, "compare"), CompareHandler),
        (url_path_join(api, "commands"), CommandsHandler),
        (url_path_join(api, "jobs"), JobsHandler),
        (url_path_join(api, r"jobs/([0-9a-f]+)"), JobHandler),
    ]
