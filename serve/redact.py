"""Job ids out of the logs: they are bearer capabilities (whoever knows one may fetch or cancel that image).

uvicorn's access log writes each request's path, and job paths carry the id (`/v1/jobs/<id>/result`);
`JobIdRedactor` rewrites them to `/v1/jobs/<job>/result` before any handler sees the record.
"""

import logging
import re

_JOB_PATH = re.compile(r"(/v1/jobs/)[^/?#\s\"]+")


def redact_path(path: str) -> str:
    """`/v1/jobs/<id>...` → `/v1/jobs/<job>...`; other paths unchanged."""
    return _JOB_PATH.sub(r"\1<job>", path)


class JobIdRedactor(logging.Filter):
    """A filter for the `uvicorn.access` logger (its record args are client, method, path, version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact_path(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = redact_path(record.msg)
        return True


def install_access_log_redaction(logger_name: str = "uvicorn.access") -> None:
    """Add the filter once per process (apps may be created many times, e.g. in tests)."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, JobIdRedactor) for f in logger.filters):
        logger.addFilter(JobIdRedactor())
