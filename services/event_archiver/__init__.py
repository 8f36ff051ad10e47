"""The event-archiver service: the durable, queryable record of every agent event."""

from event_archiver.errors import ArchiveError
from event_archiver.service import EventArchiver
from event_archiver.store import EVENTS_TABLE, EventStore

__all__ = ["EVENTS_TABLE", "ArchiveError", "EventArchiver", "EventStore"]
