"""Fan-out of derived documents to subscribed callbacks, where one failing subscriber never stops the rest."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


class Subscribers(list):
    """A list of ``callback(name, doc)``; calling it sends the document to each, logging (not raising) failures."""

    def __init__(self, what: str):
        super().__init__()
        self.what = what  # names the documents in log messages, e.g. "analysis"

    def __call__(self, name: str, doc: dict) -> None:
        for callback in self:
            try:
                callback(name, doc)
            except Exception:
                logger.exception("subscriber %r failed on a %s %s document", callback, self.what, name)
